"""The dispatcher on a real SQLite store, with executors faked behind the ProcessOps seam."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from queuectl.protocol import JobState, Outcome
from queuectld.committer import Committer
from queuectld.config import DaemonConfig, QueueSettings
from queuectld.dispatcher import Dispatcher, Mode
from queuectld.events import EventBus
from queuectld.execproto import JobFinished, JobStarted
from queuectld.jobs import Job, NewJob
from queuectld.store import open_store
from queuectld.supervisor import Supervisor, SupervisorEvents
from tests.unit.fakes import FakeExecutor, FakeOps, aio

SETTINGS = QueueSettings(
    max_retries=1, backoff_base=1.0, backoff_max=0.0, default_timeout=10.0, max_interruptions=5
)


@dataclass
class Rig:
    dispatcher: Dispatcher
    committer: Committer
    ops: FakeOps
    events: EventBus

    async def enqueue(self, *ids: str) -> None:
        news = [NewJob("true", id=i) for i in ids]
        await self.committer.call(lambda s: s.insert_jobs(news, time.time()))
        self.dispatcher.wake()

    async def job(self, job_id: str) -> Job:
        job = await self.committer.call(lambda s: s.get_job(job_id, with_history=True))
        assert job is not None
        return job

    async def ready_executors(self, slots: int) -> list[FakeExecutor]:
        await self.dispatcher.supervisor.scale(slots)
        for proc in self.ops.spawned:
            proc.say({"kind": "ready", "pid": proc.pid})
        return self.ops.spawned


async def until(cond: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Let the loop run until ``cond()`` holds (the daemon's own tasks make progress)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def until_state(rig: Rig, job_id: str, state: JobState) -> Job:
    deadline = time.monotonic() + 5.0
    while (job := await rig.job(job_id)).state is not state:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {job.state}, not {state}")
        await asyncio.sleep(0.005)
    return job


@asynccontextmanager
async def rig(tmp_path: Path, max_executors: int = 1) -> AsyncIterator[Rig]:
    store = open_store(str(tmp_path / "queue.db"))
    committer = Committer(store, asyncio.get_running_loop())
    committer.start()
    config = DaemonConfig(home=str(tmp_path), node_id="node").resolved()
    ops, events = FakeOps(), EventBus()

    def make_supervisor(sup_events: SupervisorEvents) -> Supervisor:
        return Supervisor(ops, sup_events, max_executors)

    dispatcher = Dispatcher(committer, events, config, lambda: SETTINGS, make_supervisor)
    dispatcher.start()
    try:
        yield Rig(dispatcher, committer, ops, events)
    finally:
        await dispatcher.close()
        await committer.stop()


def runs(proc: FakeExecutor) -> list[str]:
    return [m["job_id"] for m in proc.sent("run")]


@aio
async def test_jobs_go_to_free_slots_and_outcomes_reach_the_store(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        (proc,) = await r.ready_executors(2)
        await r.enqueue("a", "b", "c")
        await until(lambda: runs(proc) == ["a", "b"], "a and b sent to the two slots")
        assert r.dispatcher.mode is Mode.RUNNING
        proc.say(
            JobStarted("a", 1, 4242).to_wire(),
            JobFinished("a", 1, Outcome.COMPLETED, 0, None, 1.0, 2.0).to_wire(),
        )
        await until(lambda: runs(proc) == ["a", "b", "c"], "c sent to the freed slot")
        job = await until_state(r, "a", JobState.COMPLETED)
        assert [(a.outcome, a.worker) for a in job.history] == [("completed", "x1")]


@aio
async def test_a_failure_goes_to_the_retry_policy(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        (proc,) = await r.ready_executors(1)
        await r.enqueue("f")
        await until(lambda: runs(proc) == ["f"], "f sent")
        proc.say(JobFinished("f", 1, Outcome.FAILED, 3, "exit code 3", 1.0, 2.0).to_wire())
        # max_retries 1, backoff 0: one retry, then the DLQ.
        await until(lambda: runs(proc) == ["f", "f"], "f retried")
        proc.say(JobFinished("f", 2, Outcome.FAILED, 3, "exit code 3", 3.0, 4.0).to_wire())
        job = await until_state(r, "f", JobState.DEAD)
        assert job.attempts == 2


@aio
async def test_a_lost_job_is_interrupted_and_keeps_its_real_start(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        (proc,) = await r.ready_executors(1)
        await r.enqueue("k")
        await until(lambda: runs(proc) == ["k"], "k sent")
        claimed = (await r.job("k")).history[0].started_at
        proc.say(JobStarted("k", 1, 4242).to_wire())
        await asyncio.sleep(0.05)
        proc.die(-9)
        await until(lambda: 4242 in r.ops.killed_groups, "k's group killed")
        job = await until_state(r, "k", JobState.PENDING)
        (attempt,) = [a for a in job.history if a.outcome == "interrupted"]
        assert attempt.started_at == claimed  # not the time the loss was noticed
        assert attempt.finished_at is not None and attempt.finished_at > attempt.started_at
        assert (job.attempts, job.interruptions) == (0, 1)


@aio
async def test_no_slots_means_no_claims(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.ready_executors(0)
        assert r.dispatcher.mode is Mode.NO_SLOTS
        await r.enqueue("p")
        await asyncio.sleep(0.05)
        assert (await r.job("p")).state is JobState.PENDING
        assert r.ops.spawned == []


@aio
async def test_drain_gives_back_jobs_waiting_on_an_executor(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        (proc,) = await r.ready_executors(1)
        await r.enqueue("a")
        await until(lambda: runs(proc) == ["a"], "a sent")
        r.dispatcher.drain()
        assert r.dispatcher.mode is Mode.DRAINING
        await r.enqueue("b")
        await asyncio.sleep(0.05)
        assert runs(proc) == ["a"]
        assert (await r.job("b")).state is JobState.PENDING
