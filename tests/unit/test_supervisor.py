"""The supervisor's state machine, driven through its ProcessOps seam without forking."""

from __future__ import annotations

import asyncio
import signal

from queuectl.protocol import Outcome
from queuectld.execproto import (
    JobFinished,
    JobRevoked,
    JobStarted,
)
from queuectld.supervisor import ExecutorState, Supervisor, shares
from tests.unit.fakes import FakeOps, Recorded, aio, claim, run, settle, started


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
    assert cancels == [{"kind": "cancel", "job_ids": ["a"], "signal": 15, "killed": False}]
