"""Fakes behind the supervisor's ProcessOps seam: executors the test speaks for."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec

from queuectl.protocol import FrameBuffer, JobState, Outcome
from queuectld.execproto import ExecutorReady, RunJob, batch_items, pack_batch
from queuectld.jobs import Claim, Job
from queuectld.supervisor import Supervisor, SupervisorEvents


class FakeStdin:
    def __init__(self) -> None:
        self.frames = FrameBuffer()
        self.messages: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        for frame in self.frames.feed(data):
            self.messages.extend(batch_items(frame))

    def close(self) -> None:
        pass


class FakeExecutor:
    """Stands for an executor process: the test speaks for it."""

    _pids = iter(range(1000, 2000))

    def __init__(self) -> None:
        self.pid = next(self._pids)
        self.stdin = FakeStdin()
        self.stdout = asyncio.StreamReader()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def say(self, *msgs: dict[str, Any]) -> None:
        self.stdout.feed_data(pack_batch(msgs))

    def die(self, code: int = -9) -> None:
        self.stdout.feed_eof()
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int:
        return await self._exit

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.stdin.messages if m.get("kind") == kind]


@dataclass
class FakeOps:
    spawned: list[FakeExecutor] = field(default_factory=list)
    killed: list[tuple[int, signal.Signals]] = field(default_factory=list)
    killed_groups: list[int] = field(default_factory=list)
    killed_cgroups: list[str] = field(default_factory=list)
    tagged: dict[str, int] = field(default_factory=dict)  # job id -> pgid found by tag

    async def spawn(self) -> FakeExecutor:
        proc = FakeExecutor()
        self.spawned.append(proc)
        return proc

    def kill(self, pid: int, sig: signal.Signals) -> None:
        self.killed.append((pid, sig))
        for proc in self.spawned:
            if proc.pid == pid and sig == signal.SIGKILL:
                proc.die()

    def kill_group(self, pgid: int) -> None:
        self.killed_groups.append(pgid)

    def kill_cgroup(self, path: str) -> None:
        self.killed_cgroups.append(path)

    def find_job_groups(self, job_ids: set[str]) -> set[int]:
        return {pgid for job_id, pgid in self.tagged.items() if job_id in job_ids}


@dataclass
class Recorded:
    capacity: int = 0
    finished: list[tuple[str, Outcome, str]] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    def events(self) -> SupervisorEvents:
        return SupervisorEvents(
            capacity=self._capacity,
            started=lambda c, by: None,
            finished=lambda c, r, by: self.finished.append((c.job.id, r.outcome, by)),
            lost=lambda c, reason: self.lost.append((c.job.id, reason)),
            revoked=lambda c: self.revoked.append(c.job.id),
        )

    def _capacity(self) -> None:
        self.capacity += 1


def claim(job_id: str) -> Claim:
    job = Job(
        id=job_id,
        command="true",
        state=JobState.PROCESSING,
        attempts=0,
        interruptions=0,
        max_retries=None,
        timeout=None,
        created_at=0.0,
        updated_at=0.0,
        run_at=0.0,
    )
    return Claim(job=job, attempt=1, lease_token="t")


def run(job_id: str) -> RunJob:
    return RunJob(job_id, 1, "true", "/", 10.0, 1.0, f"/tmp/job_{job_id}.txt", 4096)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def started(sup: Supervisor, ops: FakeOps, count: int) -> list[FakeExecutor]:
    await sup.scale(count)
    for proc in ops.spawned:
        proc.say(ExecutorReady(proc.pid).to_wire())
    await settle()
    return ops.spawned


P = ParamSpec("P")


def aio(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop (no plugin needed); fixtures pass through."""

    @functools.wraps(fn)
    def test(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return test
