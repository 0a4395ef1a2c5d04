"""The supervisor's state machine, driven through its ProcessOps seam without forking."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from queuectl.protocol import FrameBuffer, JobState, Outcome
from queuectld.execproto import (
    ExecutorReady,
    JobFinished,
    JobRevoked,
    JobStarted,
    RunJob,
    batch_items,
    pack_batch,
)
from queuectld.jobs import Claim, Job
from queuectld.supervisor import ExecutorState, Supervisor, SupervisorEvents, shares


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


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop (no plugin needed)."""

    def test() -> None:
        asyncio.run(fn())

    test.__name__ = fn.__name__
    return test


def test_shares_split_slots_evenly() -> None:
    assert shares(5, 2) == [3, 2]
    assert shares(1000, 2) == [500, 500]
    assert shares(3, 0) == []


@aio
async def test_a_few_executors_carry_all_slots() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=2)
    procs = await started(sup, ops, 5)
    assert len(procs) == 2
    assert [p.sent("slots")[-1]["count"] for p in procs] == [3, 2]
    assert sup.free_slots() == 5 and sup.running == 5
    assert all(e.state is ExecutorState.READY for e in sup.executors.values())


@aio
async def test_never_more_executors_than_slots() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=4)
    await started(sup, ops, 1)
    assert len(ops.spawned) == 1


@aio
async def test_assign_fills_free_slots_then_refuses() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=2)
    procs = await started(sup, ops, 3)
    names = [sup.assign(claim(f"j{i}"), run(f"j{i}"), 60.0) for i in range(3)]
    assert None not in names
    assert sup.assign(claim("j3"), run("j3"), 60.0) is None
    await settle()
    assert sorted(len(p.sent("run")) for p in procs) == [1, 2]
    # One frame per executor for everything sent in one loop turn.
    assert sup.free_slots() == 0


@aio
async def test_finished_job_frees_its_slot_and_is_reported() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=1)
    (proc,) = await started(sup, ops, 1)
    sup.assign(claim("a"), run("a"), 60.0)
    proc.say(
        JobStarted("a", 1, 4242).to_wire(),
        JobFinished("a", 1, Outcome.COMPLETED, 0, None, 1.0, 2.0).to_wire(),
    )
    await settle()
    assert rec.finished == [("a", Outcome.COMPLETED, "x1")]
    assert sup.free_slots() == 1


@aio
async def test_dead_executor_kills_its_jobs_groups_and_reports_them_lost() -> None:
    ops, rec = FakeOps(), Recorded()
    ops.tagged = {"b": 5151}
    sup = Supervisor(ops, rec.events(), max_executors=1)
    (proc,) = await started(sup, ops, 2)
    sup.assign(claim("a"), run("a"), 60.0)
    sup.assign(claim("b"), run("b"), 60.0)
    proc.say(JobStarted("a", 1, 4242).to_wire())  # b's start was never reported
    await settle()
    proc.die(-9)
    await settle()
    assert sorted(ops.killed_groups) == [4242, 5151]
    assert sorted(job for job, _ in rec.lost) == ["a", "b"]
    assert all("exited with code -9" in reason for _, reason in rec.lost)
    assert len(ops.spawned) == 2  # replaced


@aio
async def test_scale_to_zero_retires_and_revokes_waiting_jobs() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=1)
    (proc,) = await started(sup, ops, 1)
    sup.assign(claim("a"), run("a"), 60.0)
    sup.assign(claim("q"), run("q"), 60.0, queued=True)
    await sup.scale(0)
    await settle()
    # Retiring hands back what waits for a slot; the running job finishes first.
    assert proc.sent("retire")
    assert sup.executors["x1"].state is ExecutorState.RETIRING
    proc.say(JobRevoked("q", 1).to_wire())
    await settle()
    assert rec.revoked == ["q"]


@aio
async def test_hung_executor_is_killed() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=1)
    (proc,) = await started(sup, ops, 1)
    sup.assign(claim("a"), run("a"), hung_after=0.0)
    proc.say(JobStarted("a", 1, 4242).to_wire())
    await settle()
    await asyncio.sleep(0.01)
    sup.kill_hung()
    await settle()
    assert (proc.pid, signal.SIGKILL) in ops.killed
    assert rec.lost and rec.lost[0][0] == "a"


@aio
async def test_cancel_reaches_executors_holding_jobs() -> None:
    ops, rec = FakeOps(), Recorded()
    sup = Supervisor(ops, rec.events(), max_executors=2)
    procs = await started(sup, ops, 2)
    sup.assign(claim("a"), run("a"), 60.0)
    sup.cancel_running(["a"])
    await settle()
    cancels = [m for p in procs for m in p.sent("cancel")]
    assert cancels == [{"kind": "cancel", "job_ids": ["a"]}]
