"""Executor processes as an explicit state machine: spawn, ready, retire, exit, respawn.

``worker start --count N`` means N jobs may run at once. The supervisor carries them on
a few executor processes (``executors`` in the configuration, by default one per CPU,
never more than N) and gives each its share of the N *slots*. It does not choose jobs
(the dispatcher does) and does not touch the store: it sends each job to an executor
with room, tells the dispatcher when slots free up, when a job finished, and when an
executor died holding jobs.

All killing decisions are made here, through one seam (:class:`ProcessOps`), so the
state machine can be driven by tests without forking: a dead executor's job groups are
killed before its jobs go back to the queue, and an executor that stops answering
(a job of it overran its timeout, grace and lease margin) is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from queuectl.errors import ProtocolError
from queuectl.wire import FrameBuffer
from queuectld import cgroup, procs
from queuectld.execproto import (
    Cancel,
    Follow,
    JobFinished,
    JobOutput,
    Retire,
    Revoke,
    RunJob,
    SetSlots,
    batch_items,
    pack_batch,
)
from queuectld.jobs import Claim

log = structlog.get_logger("queuectld.supervisor")

# An executor that dies soon after starting is respawned after a growing delay.
RESPAWN_BASE_S = 0.1
RESPAWN_MAX_S = 30.0
CRASH_WINDOW_S = 60.0
# An executor that dies sooner than this after it started counts towards a crash loop;
# one killed later (by an operator, by the hung check) is simply replaced at once.
SHORT_LIVED_S = 5.0
READ_CHUNK = 256 * 1024


class ExecutorState(enum.StrEnum):
    STARTING = "starting"  # spawned, waiting for its ready frame
    READY = "ready"  # takes jobs, up to its slots
    RETIRING = "retiring"  # told to finish its running jobs and exit
    EXITED = "exited"


TRANSITIONS: dict[ExecutorState, frozenset[ExecutorState]] = {
    ExecutorState.STARTING: frozenset(
        {ExecutorState.READY, ExecutorState.RETIRING, ExecutorState.EXITED}
    ),
    ExecutorState.READY: frozenset({ExecutorState.RETIRING, ExecutorState.EXITED}),
    ExecutorState.RETIRING: frozenset({ExecutorState.EXITED}),
    ExecutorState.EXITED: frozenset(),
}


class ExecutorProcess(Protocol):
    """What the supervisor needs of an executor process (asyncio's Process fits)."""

    @property
    def pid(self) -> int: ...

    stdin: Any
    stdout: Any

    async def wait(self) -> int: ...


class ProcessOps(Protocol):
    """The operating-system calls behind the supervisor (faked by unit tests)."""

    async def spawn(self) -> ExecutorProcess: ...

    def kill(self, pid: int, sig: signal.Signals) -> None: ...

    def kill_group(self, pgid: int) -> None: ...

    def kill_cgroup(self, path: str) -> None: ...

    def find_job_groups(self, job_ids: set[str]) -> set[int]: ...


class OsProcessOps:
    """The real thing: :mod:`queuectld.procs`."""

    def __init__(self, env: dict[str, str], queue_tag: str) -> None:
        self.env = env
        self.queue_tag = queue_tag

    async def spawn(self) -> ExecutorProcess:
        return await procs.spawn_executor(self.env)

    def kill(self, pid: int, sig: signal.Signals) -> None:
        procs.kill_process(pid, sig)

    def kill_group(self, pgid: int) -> None:
        procs.signal_group(pgid, signal.SIGKILL)

    def kill_cgroup(self, path: str) -> None:
        cgroup.kill(path)
        # Removed once its processes have left (its executor, which would have, is dead).
        _remove_later(path, tries=25)

    def find_job_groups(self, job_ids: set[str]) -> set[int]:
        return procs.find_job_groups(self.queue_tag, job_ids)


@dataclass
class Held:
    """A job sent to an executor and not yet finished or handed back."""

    claim: Claim
    hung_after: float  # seconds a started attempt may take before its executor is hung
    queued: bool  # sent to wait for a slot (claimed ahead), not to a free slot
    cgroup: str | None = None  # the attempt's cgroup, if contained
    pgid: int | None = None
    deadline: float = float("inf")  # monotonic; past it the executor is presumed hung


@dataclass
class Executor:
    """One supervised executor process and the jobs it holds."""

    name: str
    proc: ExecutorProcess
    state: ExecutorState = ExecutorState.STARTING
    slots: int = 0
    held: dict[str, Held] = field(default_factory=dict)
    revoking: set[str] = field(default_factory=set)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    reader: asyncio.Task[None] | None = None

    def move(self, new: ExecutorState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"executor {self.name}: {self.state} -> {new} is not allowed")
        self.state = new

    @property
    def free(self) -> int:
        """Slots with nothing sent to them."""
        if self.state is not ExecutorState.READY:
            return 0
        return max(0, self.slots - len(self.held))


@dataclass(frozen=True)
class SupervisorEvents:
    """What the supervisor tells the dispatcher (all called on the event loop)."""

    capacity: Callable[[], None]  # slots became free
    started: Callable[[Claim, str], None]  # an executor started the job (claim, by)
    finished: Callable[[Claim, JobFinished, str], None]  # an attempt ended (claim, result, by)
    lost: Callable[[Claim, str], None]  # an executor died holding it (with the reason)
    revoked: Callable[[Claim], None]  # handed back unstarted


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal integers, larger first."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Supervisor:
    """Keeps executors running with ``desired`` slots in all, and reports what they do."""

    def __init__(
        self,
        ops: ProcessOps,
        events: SupervisorEvents,
        max_executors: int,
        on_output: Callable[[JobOutput], None] | None = None,
    ) -> None:
        self._ops = ops
        self._events = events
        # Where followed jobs' output goes (`logs -f`), and which jobs are followed.
        self._on_output = on_output
        self._followed: set[str] = set()
        self.max_executors = max(1, max_executors)
        self.desired = 0
        self.executors: dict[str, Executor] = {}
        self._names = itertools.count(1)
        self._crashes: list[float] = []
        self._respawn_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._changed = asyncio.Event()
        self._flush_scheduled = False

    # -- views ----------------------------------------------------------------

    def _live(self) -> list[Executor]:
        return [
            e
            for e in self.executors.values()
            if e.state in (ExecutorState.STARTING, ExecutorState.READY)
        ]

    def held_ids(self) -> set[str]:
        """The jobs sent to an executor and not yet reported ended."""
        return {job_id for executor in self.executors.values() for job_id in executor.held}

    def free_slots(self) -> int:
        """Slots of ready executors with nothing sent to them."""
        if self._stopping:
            return 0
        return sum(e.free for e in self.executors.values())

    def queue_room(self) -> int:
        """How many jobs may be sent to wait behind running ones (one per slot)."""
        if self._stopping:
            return 0
        return sum(
            max(0, 2 * e.slots - max(len(e.held), e.slots))
            for e in self.executors.values()
            if e.state is ExecutorState.READY
        )

    @property
    def running(self) -> int:
        """Slots ready to run jobs (``workers running`` in ``status``)."""
        ready = sum(e.slots for e in self.executors.values() if e.state is ExecutorState.READY)
        return min(ready, self.desired)

    @property
    def busy(self) -> int:
        """Jobs running (or starting) on executors."""
        return sum(
            1 for e in self.executors.values() for h in e.held.values() if not h.queued or h.pgid
        )

    def held(self) -> int:
        return sum(len(e.held) for e in self.executors.values())

    # -- control --------------------------------------------------------------

    async def scale(self, desired: int) -> None:
        """Set the number of slots: start or retire executors, give each its share."""
        self.desired = desired
        await self._reconcile()

    async def _reconcile(self) -> None:
        if self._stopping:
            return
        wanted = 0 if self.desired == 0 else min(self.max_executors, self.desired)
        live = self._live()
        if len(live) > wanted:
            for executor in sorted(live, key=lambda e: len(e.held))[: len(live) - wanted]:
                self._retire(executor)
            live = self._live()
        elif len(live) < wanted and self._respawn_timer is None:
            for _ in range(wanted - len(live)):
                await self._start_one()
            live = self._live()
        for executor, slots in zip(live, shares(self.desired, len(live)), strict=True):
            if executor.slots != slots:
                if slots < executor.slots:
                    self._revoke_queued(executor)
                executor.slots = slots
                self._send(executor, SetSlots(slots).to_wire())
        self._changed.set()
        self._events.capacity()

    async def _start_one(self) -> None:
        name = f"x{next(self._names)}"
        try:
            proc = await self._ops.spawn()
        except OSError as exc:
            log.error("executor_spawn_failed", executor=name, error=str(exc))
            self._note_crash()
            return
        executor = Executor(name=name, proc=proc)
        self.executors[name] = executor
        executor.reader = asyncio.create_task(self._read(executor), name=f"reader-{name}")
        log.debug("executor_spawned", executor=name, pid=proc.pid)

    def _retire(self, executor: Executor) -> None:
        executor.move(ExecutorState.RETIRING)
        self._send(executor, Retire().to_wire())

    def assign(
        self, claim: Claim, run: RunJob, hung_after: float, queued: bool = False
    ) -> str | None:
        """Send ``claim`` to the executor with the most room; its name (None: no room).

        Synchronous on purpose: the slot is taken before the dispatcher looks again.
        """
        ready = [e for e in self.executors.values() if e.state is ExecutorState.READY]
        if queued:
            room = [e for e in ready if len(e.held) < 2 * e.slots]
            target = min(room, key=lambda e: len(e.held) - e.slots, default=None)
        else:
            target = max(ready, key=lambda e: e.free, default=None)
            if target is not None and target.free <= 0:
                target = None
        if target is None:
            return None
        held = Held(claim, hung_after, queued, run.cgroup)
        if not queued:
            held.deadline = time.monotonic() + hung_after
        target.held[claim.job.id] = held
        self._send(target, run.to_wire())
        if claim.job.id in self._followed:
            self._send(target, Follow(claim.job.id, True).to_wire())
        return target.name

    def follow(self, job_id: str, on: bool) -> None:
        """Have the job's output forwarded to ``on_output`` (again from the start of the
        running attempt, for a new follower), or no longer."""
        if on:
            self._followed.add(job_id)
        else:
            self._followed.discard(job_id)
        for executor in self.executors.values():
            if job_id in executor.held and executor.state is not ExecutorState.EXITED:
                self._send(executor, Follow(job_id, on).to_wire())

    def revoke_queued(self, count: int) -> None:
        """Ask for up to ``count`` jobs waiting for a slot back (slots are free elsewhere)."""
        for executor in self.executors.values():
            wanted = _waiting(executor)[:count]
            if wanted:
                executor.revoking.update(wanted)
                self._send(executor, Revoke(wanted).to_wire())
                count -= len(wanted)
            if count <= 0:
                return

    def revoke_all_queued(self) -> list[str]:
        """Every job waiting for a slot comes back (drain, scale down); their ids."""
        return [job_id for e in self.executors.values() for job_id in self._revoke_queued(e)]

    def _revoke_queued(self, executor: Executor) -> list[str]:
        wanted = _waiting(executor)
        if wanted:
            executor.revoking.update(wanted)
            self._send(executor, Revoke(wanted).to_wire())
        return wanted

    def cancel_running(self, job_ids: list[str] | None = None) -> None:
        """Stop running jobs now (all, or those named): TERM, grace, KILL; they end interrupted."""
        for executor in self.executors.values():
            if executor.state is not ExecutorState.EXITED and executor.held:
                self._send(executor, Cancel(job_ids).to_wire())

    def kill(self, job_id: str, signum: int) -> bool:
        """A user's `kill`: ``signum`` to the job's group, SIGKILL after the grace period;
        it ends ``killed`` (or comes back revoked if it had not started). False when no
        executor holds the job."""
        for executor in self.executors.values():
            if job_id in executor.held and executor.state is not ExecutorState.EXITED:
                self._send(executor, Cancel([job_id], signal=signum, killed=True).to_wire())
                return True
        return False

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no executor holds a job; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self.held():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def stop(self, kill_after: float) -> None:
        """Retire every executor and wait for them to exit; kill the ones that do not."""
        self._stopping = True
        if self._respawn_timer is not None:
            self._respawn_timer.cancel()
        for executor in list(self.executors.values()):
            if executor.held:
                self._send(executor, Cancel().to_wire())
            if executor.state in (ExecutorState.STARTING, ExecutorState.READY):
                self._retire(executor)
        readers = [e.reader for e in self.executors.values() if e.reader is not None]
        if not readers:
            return
        _, still = await asyncio.wait(readers, timeout=kill_after)
        if still:
            for executor in list(self.executors.values()):
                log.warning("executor_killed", executor=executor.name, pid=executor.proc.pid)
                self._ops.kill(executor.proc.pid, signal.SIGTERM)
            _, still = await asyncio.wait(still, timeout=2.0)
            for executor in list(self.executors.values()):
                self._ops.kill(executor.proc.pid, signal.SIGKILL)
            if still:
                await asyncio.wait(still, timeout=2.0)

    def kill_hung(self) -> None:
        """Kill executors holding a job past its deadline; their exit requeues the jobs."""
        now = time.monotonic()
        for executor in list(self.executors.values()):
            late = [h for h in executor.held.values() if now > h.deadline]
            if late:
                log.error(
                    "executor_hung",
                    executor=executor.name,
                    pid=executor.proc.pid,
                    job_ids=[h.claim.job.id for h in late],
                )
                for h in executor.held.values():
                    h.deadline = float("inf")
                self._ops.kill(executor.proc.pid, signal.SIGKILL)

    # -- sending --------------------------------------------------------------

    def _send(self, executor: Executor, msg: dict[str, Any]) -> None:
        """Queue ``msg``; every executor's messages of this loop turn go in one frame."""
        executor.outbox.append(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for executor in self.executors.values():
            if not executor.outbox:
                continue
            frame, executor.outbox = pack_batch(executor.outbox), []
            with contextlib.suppress(ConnectionError, RuntimeError, AttributeError):
                executor.proc.stdin.write(frame)  # a broken pipe shows as the exit

    # -- events from an executor -------------------------------------------------

    async def _read(self, executor: Executor) -> None:
        reader = executor.proc.stdout
        frames = FrameBuffer()
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                for frame in frames.feed(data):
                    for msg in batch_items(frame):
                        self._handle(executor, msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.error("executor_protocol_error", executor=executor.name, error=str(exc))
            self._ops.kill(executor.proc.pid, signal.SIGKILL)
        except Exception:
            log.exception("executor_reader_failed", executor=executor.name)
            self._ops.kill(executor.proc.pid, signal.SIGKILL)
        await self._exited(executor)

    def _handle(self, executor: Executor, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        if kind == "ready":
            if executor.state is ExecutorState.STARTING:
                executor.move(ExecutorState.READY)
                log.debug("executor_ready", executor=executor.name, pid=executor.proc.pid)
                self._changed.set()
                self._events.capacity()
        elif kind == "started":
            held = executor.held.get(str(msg.get("job_id")))
            if held is not None:
                held.pgid = int(msg["pgid"])
                held.deadline = time.monotonic() + held.hung_after
                self._events.started(held.claim, executor.name)
        elif kind == "revoked":
            job_id = str(msg.get("job_id"))
            executor.revoking.discard(job_id)
            held = executor.held.pop(job_id, None)
            if held is not None:
                self._changed.set()
                self._events.revoked(held.claim)
        elif kind == "output":
            if self._on_output is not None:
                self._on_output(JobOutput.from_wire(msg))
        elif kind == "finished":
            job_id = str(msg.get("job_id"))
            executor.revoking.discard(job_id)
            held = executor.held.pop(job_id, None)
            self._changed.set()
            if held is not None:
                self._events.finished(held.claim, JobFinished.from_wire(msg), executor.name)
            if executor.free:
                self._events.capacity()

    async def _exited(self, executor: Executor) -> None:
        code = await executor.proc.wait()
        expected = executor.state is ExecutorState.RETIRING
        if executor.state is not ExecutorState.EXITED:
            executor.move(ExecutorState.EXITED)
        self.executors.pop(executor.name, None)
        held, executor.held = list(executor.held.values()), {}
        if held:
            # End every job before the jobs are handed out again, so none runs twice at
            # once: its cgroup (all of it, whatever left the group), and its group. Jobs
            # whose start was not reported yet are found by their tag.
            for h in held:
                if h.cgroup is not None:
                    self._ops.kill_cgroup(h.cgroup)
            groups = {h.pgid for h in held if h.pgid is not None}
            unknown = {h.claim.job.id for h in held if h.pgid is None}
            if unknown:
                groups |= self._ops.find_job_groups(unknown)
            for group in groups:
                self._ops.kill_group(group)
        reason = f"executor {executor.name} exited with code {code}"
        for h in held:
            # Whether a job never reported as started did start cannot be known: it is
            # recorded as interrupted, like one that did (at-least-once, nothing hidden).
            self._events.lost(h.claim, reason)
        self._changed.set()
        if expected and not held:
            log.debug("executor_exited", executor=executor.name, code=code)
        else:
            log.warning(
                "executor_died",
                executor=executor.name,
                pid=executor.proc.pid,
                code=code,
                jobs=[h.claim.job.id for h in held],
            )
            if time.monotonic() - executor.started_at < SHORT_LIVED_S:
                self._note_crash()
        if not self._stopping:
            await self._reconcile()

    def _note_crash(self) -> None:
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(self._crashes) <= 1:
            return
        delay = min(RESPAWN_MAX_S, RESPAWN_BASE_S * 2 ** len(self._crashes))
        if self._respawn_timer is None:
            loop = asyncio.get_running_loop()
            self._respawn_timer = loop.call_later(delay, self._respawn_due)

    def _respawn_due(self) -> None:
        self._respawn_timer = None
        asyncio.get_running_loop().create_task(self._reconcile())


def _remove_later(path: str, tries: int) -> None:
    """Remove a killed cgroup, looking again every 0.2 s; left to the next sweep after."""
    try:
        if cgroup.remove(path) or tries <= 0:
            return
    except OSError:
        return
    asyncio.get_running_loop().call_later(0.2, _remove_later, path, tries - 1)


def _waiting(executor: Executor) -> list[str]:
    """Jobs sent to wait for a slot, not started, not already asked back."""
    return [
        job_id
        for job_id, h in executor.held.items()
        if h.queued and h.pgid is None and job_id not in executor.revoking
    ]


def default_executors(configured: int) -> int:
    """``executors`` from the configuration, or one per CPU."""
    return configured if configured > 0 else (os.cpu_count() or 1)
