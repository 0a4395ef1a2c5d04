"""Leases: every claim holds a lease token; a result under a lost lease is refused.

A job goes back to the queue when its holder is gone (worker killed, worker hung,
daemon restarted, lease expired under another node), is recorded as interrupted,
and counts against ``max-interruptions``, so a job that keeps killing its worker
ends dead with that reason instead of crash-looping.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queuectl.protocol import JobState, Outcome
from queuectld.jobs import AttemptResult, Claim, NewJob
from queuectld.store.sqlite import SQLiteStore
from tests.chaos.chaoslib import DaemonProcess, check_ledger, side_effects, wait_drained, wait_until


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "queue.db")
    s.open()
    yield s
    s.close()


def _claim(store: SQLiteStore, owner: str, now: float) -> Claim:
    with store.transaction():
        (claim,) = store.claim_due(owner, 1, now, 10.0, 30.0)
    return claim


def _finish(
    store: SQLiteStore, claim: Claim, outcome: Outcome, state: JobState, now: float
) -> bool:
    job = claim.job
    result = AttemptResult(
        job_id=job.id,
        attempt=claim.attempt,
        lease_token=claim.lease_token,
        outcome=outcome.value,
        exit_code=0 if outcome is Outcome.COMPLETED else None,
        error=None if outcome is Outcome.COMPLETED else "interrupted",
        started_at=now,
        finished_at=now,
        next_state=state,
        attempts=job.attempts + (1 if outcome is Outcome.COMPLETED else 0),
        interruptions=job.interruptions + (1 if outcome is Outcome.INTERRUPTED else 0),
        run_at=now,
    )
    with store.transaction():
        return store.finish_attempt(result)


def test_late_result_from_an_old_lease_is_refused(store: SQLiteStore) -> None:
    """Claim, lose the lease (recovered as interrupted), re-claim; the old holder's
    result is refused and nothing is recorded twice."""
    now = time.time()
    with store.transaction():
        store.insert_jobs([NewJob(command="true", id="j1")], now)
    old = _claim(store, "node-a", now)
    # The daemon restarts: its leases are returned to the queue as interrupted.
    with store.transaction():
        (held,) = store.leased_jobs("node-a", None)
    assert held.lease_token == old.lease_token
    assert _finish(store, held, Outcome.INTERRUPTED, JobState.PENDING, now + 1)
    new = _claim(store, "node-a", now + 2)
    assert new.lease_token != old.lease_token and new.attempt == old.attempt + 1
    # The old holder reports late, with its old token: refused, whatever it claims.
    assert not _finish(store, old, Outcome.COMPLETED, JobState.COMPLETED, now + 3)
    assert not _finish(store, old, Outcome.INTERRUPTED, JobState.PENDING, now + 3)
    with store.transaction():
        job = store.get_job("j1", with_history=True)
    assert job is not None and job.state is JobState.PROCESSING
    assert job.lease_token == new.lease_token
    assert [a.outcome for a in job.history] == ["interrupted", None]
    # The current holder's result counts once; a replay of it is refused too.
    assert _finish(store, new, Outcome.COMPLETED, JobState.COMPLETED, now + 4)
    assert not _finish(store, new, Outcome.COMPLETED, JobState.COMPLETED, now + 5)
    with store.transaction():
        job = store.get_job("j1", with_history=True)
        counts = store.count_by_state()
    assert job is not None and job.state is JobState.COMPLETED
    assert [a.outcome for a in job.history] == ["interrupted", "completed"]
    assert job.attempts == 1 and job.interruptions == 1
    assert counts[JobState.COMPLETED] == 1 and counts[JobState.PROCESSING] == 0


def _settings(daemon: DaemonProcess, workers: int, **settings: str) -> None:
    with daemon.client() as c:
        for key, value in settings.items():
            c.config_set(key.replace("_", "-"), value)
        c.set_workers(workers)


def test_job_that_kills_its_worker_ends_dead_not_crash_looping(
    make_daemon: Callable[..., DaemonProcess], scratch: Path
) -> None:
    """``kill -9 $PPID`` kills the worker (the job shell's parent) every time: after
    max-interruptions the job is dead with that reason; other jobs still complete."""
    side = scratch / "side"
    daemon = make_daemon()
    daemon.start()
    _settings(daemon, 2, max_interruptions="2")
    with daemon.client() as c:
        c.enqueue(f"echo killer >> {side}; kill -9 $PPID; sleep 5", id="killer")
        for i in range(10):
            c.enqueue(f"echo ok{i} >> {side}", id=f"ok{i}")
    wait_drained(daemon, timeout=60)
    with daemon.client() as c:
        killer = c.get_job("killer")
        assert killer["state"] == "dead"
        assert killer["interruptions"] == 3 and killer["attempts"] == 0
        assert "interrupted 3 times (limit 2)" in (killer["last_error"] or "")
        outcomes = [a["outcome"] for a in killer["history"]]
        assert outcomes == ["interrupted"] * 3
        assert all("exited with code -9" in a["error"] for a in killer["history"])
        assert all(c.get_job(f"ok{i}")["state"] == "completed" for i in range(10))
        ledger = check_ledger(c, {"killer", *(f"ok{i}" for i in range(10))}, side_effects(side))
        # The supervisor brings the workers back after the crash loop ends.
        wait_until(lambda: c.status()["workers"]["running"] == 2, 30, "workers respawned")
    assert ledger["dead"] == 1 and side_effects(side)["killer"] == 3


def test_hung_worker_is_killed_and_its_job_runs_again_once(
    make_daemon: Callable[..., DaemonProcess], scratch: Path
) -> None:
    """A worker that stops answering (SIGSTOP) past the job's timeout + grace + lease
    margin is killed; its job goes back to the queue once and completes."""
    side = scratch / "side"
    daemon = make_daemon(
        env={
            "QUEUECTLD_KILL_GRACE": "0.5",
            "QUEUECTLD_LEASE_MARGIN": "0.5",
            "QUEUECTLD_SAFETY_POLL": "0.3",
        }
    )
    daemon.start()
    _settings(daemon, 1)
    with daemon.client() as c:
        c.enqueue(f"sleep 0.3; echo hung >> {side}", id="hung", timeout=1)
    worker = wait_until(lambda: daemon.executors(), 10, "a worker")[0]
    wait_until(lambda: daemon.job_groups(), 10, "the job to start")
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_drained(daemon, timeout=30)
    finally:
        if os.path.exists(f"/proc/{worker}"):
            os.kill(worker, signal.SIGCONT)
    with daemon.client() as c:
        job = c.get_job("hung")
        check_ledger(c, {"hung"}, side_effects(side))
    assert job["state"] == "completed"
    assert [a["outcome"] for a in job["history"]] == ["interrupted", "completed"]
    assert "exited with code -9" in job["history"][0]["error"]
    assert not os.path.exists(f"/proc/{worker}") or _is_zombie(worker)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _plant_foreign_lease(database: Path, job_id: str, expires_in: float) -> None:
    """A job claimed by another node (e.g. this host under an old hostname) that vanished."""
    store = SQLiteStore(database)
    store.open()
    try:
        now = time.time()
        with store.transaction():
            store.insert_jobs([NewJob(command="true", id=job_id)], now)
            store.claim_due("vanished-node", 1, now, 0.0, expires_in)
    finally:
        store.close()


def test_expired_lease_of_a_vanished_daemon_is_rescued(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Leases held by another node_id go back to the queue once they expire: at start
    if already expired, else by the safety poll while the daemon runs."""
    daemon = make_daemon(env={"QUEUECTLD_SAFETY_POLL": "0.3"})
    daemon.database.parent.mkdir(parents=True)
    _plant_foreign_lease(daemon.database, "expired", expires_in=-1.0)
    _plant_foreign_lease(daemon.database, "expiring", expires_in=3.0)
    daemon.start()
    _settings(daemon, 1)
    with daemon.client() as c:
        assert c.get_job("expired")["state"] in ("pending", "processing", "completed")
        assert c.get_job("expiring")["state"] == "processing"  # not stolen early
        wait_until(lambda: c.get_job("expiring")["state"] == "completed", 15, "rescue")
        for job_id in ("expired", "expiring"):
            job = c.get_job(job_id)
            assert job["state"] == "completed"
            assert [a["outcome"] for a in job["history"]] == ["interrupted", "completed"]
