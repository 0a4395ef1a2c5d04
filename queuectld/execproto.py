"""Messages between the daemon and its executor processes (private to queuectld).

They travel over the executor's stdin/stdout pipes with the socket protocol's framing
(:mod:`queuectl.protocol`: a 4-byte length, one msgpack map). Each frame is a
*batch*: ``{"kind": "batch", "items": [...]}``, one item per message, so that the
assignments of one dispatch cycle, or everything an executor noticed in one turn of
its loop, cost one write and one wake-up on the other side.

Daemon -> executor: :class:`RunJob`, :class:`SetSlots`, :class:`Revoke`,
:class:`Cancel`, :class:`Retire`, :class:`Follow`. Executor -> daemon:
:class:`ExecutorReady`, :class:`JobStarted`, :class:`JobOutput`, :class:`JobFinished`,
:class:`JobRevoked`. A closed stdin tells the executor the daemon is gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from queuectl.protocol import Outcome
from queuectl.wire import pack


def pack_batch(items: Iterable[Mapping[str, Any]]) -> bytes:
    """One frame carrying every message in ``items``, in order."""
    return pack({"kind": "batch", "items": list(items)})


def batch_items(frame: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages of one frame (a lone message counts as a batch of one)."""
    if frame.get("kind") == "batch":
        items = frame.get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    return [dict(frame)]


# -- daemon -> executor ---------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    """Run one attempt of a job: at once if a slot is free, else when one frees up."""

    job_id: str
    attempt: int
    command: str
    cwd: str
    timeout: float
    kill_grace: float
    log_path: str
    log_max_bytes: int
    # Run the job as this user (a root daemon serving several users); None: as the executor.
    uid: int | None = None
    # The job's own variables and queuectl's (QUEUECTL_QUEUE, QUEUECTL_LOG), over the
    # executor's environment.
    env: dict[str, str] | None = None
    # The attempt's cgroup (queuectld.cgroup); None: its process group only.
    cgroup: str | None = None
    # The job's limits as queuectld.limits.plan applies them: files written in the
    # attempt's cgroup, rlimits set in its shell, and the log header's words for both.
    memory: int | None = None  # bytes (named in an OOM kill's reason)
    cgroup_files: dict[str, str] | None = None
    rlimits: list[tuple[int, int]] | None = None
    limits_note: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "run", **vars(self)}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> RunJob:
        return cls(**{k: v for k, v in msg.items() if k != "kind"})


@dataclass(frozen=True)
class SetSlots:
    """How many jobs the executor may run at once (its share of ``worker start --count``)."""

    count: int

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "slots", "count": self.count}


@dataclass(frozen=True)
class Revoke:
    """Jobs wanted back: each one not started yet is handed back with :class:`JobRevoked`."""

    job_ids: list[str]

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "revoke", "job_ids": self.job_ids}


@dataclass(frozen=True)
class Cancel:
    """Stop these running jobs (all of them when ``job_ids`` is None): ``signal`` (SIGTERM
    by default) to each group, SIGKILL after its grace period; they end ``interrupted``,
    or ``killed`` when a user asked (``killed``). Jobs waiting for a slot are handed back."""

    job_ids: list[str] | None = None
    signal: int = 15
    killed: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": "cancel",
            "job_ids": self.job_ids,
            "signal": self.signal,
            "killed": self.killed,
        }


@dataclass(frozen=True)
class Retire:
    """Start nothing more; hand back waiting jobs, let running ones finish, then exit."""

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "retire"}


@dataclass(frozen=True)
class Follow:
    """Forward this job's output as it is written (``on``), or stop forwarding it.

    Each ``on`` also sends what the running attempt has written so far (followers
    joining late skip what they already have by its offset); a job still waiting for a
    slot is forwarded from its start.
    """

    job_id: str
    on: bool

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "follow", "job_id": self.job_id, "on": self.on}


# -- executor -> daemon ---------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorReady:
    """Started and waiting for jobs."""

    pid: int

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "ready", "pid": self.pid}


@dataclass(frozen=True)
class JobStarted:
    """The job's shell runs as ``pgid`` (its process group id)."""

    job_id: str
    attempt: int
    pgid: int

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "started", **vars(self)}


@dataclass(frozen=True)
class JobRevoked:
    """A job was handed back without being started."""

    job_id: str
    attempt: int

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "revoked", "job_id": self.job_id, "attempt": self.attempt}


@dataclass(frozen=True)
class JobOutput:
    """Bytes a followed job wrote to ``stream`` (``stdout``/``stderr``) at ``offset``.

    ``offset`` counts every byte the attempt wrote to that stream, kept or not, so a
    receiver can drop what it already has. ``cut``: the bytes before ``offset`` that
    the receiver lacks were not kept (the log cap), so it must not wait for them.
    Sent before the attempt's :class:`JobFinished`, on the same pipe.
    """

    job_id: str
    attempt: int
    stream: str
    offset: int
    data: bytes
    cut: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "output", **vars(self)}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> JobOutput:
        return cls(**{k: v for k, v in msg.items() if k != "kind"})


@dataclass(frozen=True)
class JobFinished:
    """One attempt is over."""

    job_id: str
    attempt: int
    outcome: Outcome
    exit_code: int | None
    error: str | None
    started_at: float
    finished_at: float
    cpu_seconds: float | None = None  # user + system time of every process of the attempt
    peak_bytes: int | None = None  # peak memory (see docs/jobs.md for what is counted)

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "finished", **vars(self), "outcome": self.outcome.value}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> JobFinished:
        body = {k: v for k, v in msg.items() if k != "kind"}
        body["outcome"] = Outcome(body["outcome"])
        return cls(**body)
