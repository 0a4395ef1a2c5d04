"""The Store contract (queuectld/store/base.py): every backend must pass this module.

Calls are made the way the daemon's committer makes them: inside
``store.transaction()``, each call in its own ``store.savepoint()``, so that a refused
call rolls back alone while the rest of the transaction commits.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from queuectl.errors import Conflict, NotFound, QueuectlError
from queuectl.protocol import JobState
from queuectld.jobs import AttemptResult, Claim, Job, NewJob, can_transition
from queuectld.store.base import Store
from tests.store.conftest import Backend

T0 = 1_000_000.0
OWNER = "node-a"
DEFAULT_TIMEOUT = 10.0
MARGIN = 30.0

StoreCall = Callable[[Store], Any]


def committed(store: Store, *calls: StoreCall) -> list[Any]:
    """Run ``calls`` in one transaction, each in a savepoint; errors are returned."""
    out: list[Any] = []
    with store.transaction():
        for fn in calls:
            try:
                with store.savepoint():
                    out.append(fn(store))
            except QueuectlError as exc:
                out.append(exc)
    return out


def one(store: Store, fn: StoreCall) -> Any:
    """One call in its own transaction; an error is raised."""
    (result,) = committed(store, fn)
    if isinstance(result, QueuectlError):
        raise result
    return result


def insert(store: Store, *jobs: NewJob, now: float = T0) -> list[Job]:
    result: list[Job] = one(store, lambda s: s.insert_jobs(list(jobs), now))
    return result


def claim(store: Store, limit: int = 10, now: float = T0, owner: str = OWNER) -> list[Claim]:
    result: list[Claim] = one(
        store, lambda s: s.claim_due(owner, limit, now, DEFAULT_TIMEOUT, MARGIN)
    )
    return result


def get(store: Store, job_id: str, history: bool = False) -> Job:
    job = one(store, lambda s: s.get_job(job_id, with_history=history))
    assert job is not None, f"job {job_id} is gone"
    assert isinstance(job, Job)
    return job


def finish(
    store: Store,
    c: Claim,
    next_state: JobState,
    *,
    outcome: str | None = None,
    now: float = T0 + 1,
    exit_code: int | None = 0,
    error: str | None = None,
    attempts: int | None = None,
    interruptions: int | None = None,
    run_at: float | None = None,
    token: str | None = None,
) -> bool:
    result = AttemptResult(
        job_id=c.job.id,
        attempt=c.attempt,
        lease_token=c.lease_token if token is None else token,
        outcome=outcome or next_state.value,
        exit_code=exit_code,
        error=error,
        started_at=now - 0.5,
        finished_at=now,
        next_state=next_state,
        attempts=c.job.attempts + 1 if attempts is None else attempts,
        interruptions=c.job.interruptions if interruptions is None else interruptions,
        run_at=now if run_at is None else run_at,
        worker="w1",
    )
    recorded: bool = one(store, lambda s: s.finish_attempt(result))
    return recorded


def counts(store: Store) -> dict[JobState, int]:
    result: dict[JobState, int] = one(store, lambda s: s.count_by_state())
    return result


def all_jobs(store: Store) -> list[Job]:
    result: list[Job] = one(store, lambda s: list(s.iter_all()))
    return result


def assert_counts_match(store: Store) -> None:
    """count_by_state agrees with the jobs actually stored."""
    actual = Counter(j.state for j in all_jobs(store))
    assert counts(store) == {s: actual.get(s, 0) for s in JobState}


# -- schema and reopening ---------------------------------------------------------


def test_schema_version_recorded_and_data_survives_reopen(backend: Backend) -> None:
    store = backend.open()
    version = one(store, lambda s: s.schema_version())
    assert isinstance(version, int) and version >= 1
    insert(store, NewJob("echo kept", id="kept"))
    one(store, lambda s: s.set_setting("max-retries", "5"))
    store.close()
    again = backend.open()
    assert one(again, lambda s: s.schema_version()) == version
    assert get(again, "kept").command == "echo kept"
    assert one(again, lambda s: s.get_settings())["max-retries"] == "5"


# -- inserting ----------------------------------------------------------------------


def test_insert_gives_pending_jobs_with_their_fields(store: Store) -> None:
    (job,) = insert(
        store,
        NewJob("echo hi", id="a", max_retries=2, timeout=3.5, cwd="/srv"),
        now=T0,
    )
    assert job.id == "a"
    assert job.state is JobState.PENDING
    assert (job.attempts, job.interruptions) == (0, 0)
    assert (job.max_retries, job.timeout, job.cwd) == (2, 3.5, "/srv")
    assert job.created_at == job.updated_at == job.run_at == T0
    assert job.lease_owner is None and job.lease_token is None
    assert get(store, "a") == job
    # Unset limits follow the queue settings: stored as None.
    (plain,) = insert(store, NewJob("true", id="b"))
    assert plain.max_retries is None and plain.timeout is None
    # A delayed job keeps its run_at.
    (later,) = insert(store, NewJob("true", id="c", run_at=T0 + 60))
    assert later.run_at == T0 + 60


def test_generated_ids_are_unique_and_skip_taken_ones(store: Store) -> None:
    insert(store, NewJob("true", id="2"))
    generated = insert(store, NewJob("a"), NewJob("b"), NewJob("c"))
    more = insert(store, NewJob("d"))
    ids = [j.id for j in generated + more]
    assert len(set(ids)) == 4
    assert "2" not in ids
    assert all(i.isdigit() for i in ids)
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)  # increasing


def test_duplicate_id_is_a_conflict_and_changes_nothing(store: Store) -> None:
    insert(store, NewJob("echo original", id="dup"))
    (err,) = committed(store, lambda s: s.insert_jobs([NewJob("echo other", id="dup")], T0 + 5))
    assert isinstance(err, Conflict)
    assert "dup" in err.message
    job = get(store, "dup")
    assert job.command == "echo original" and job.created_at == T0
    assert counts(store)[JobState.PENDING] == 1


def test_a_batch_with_a_later_conflict_keeps_nothing(store: Store) -> None:
    insert(store, NewJob("true", id="taken"))
    before = all_jobs(store)
    batch = [NewJob("true", id="new1"), NewJob("true"), NewJob("true", id="taken")]
    first, refused, last = committed(
        store,
        lambda s: s.insert_jobs([NewJob("true", id="before")], T0),
        lambda s: s.insert_jobs(batch, T0),
        lambda s: s.insert_jobs([NewJob("true", id="after")], T0),
    )
    assert isinstance(refused, Conflict) and "taken" in refused.message
    # The calls around the refused one commit; nothing of the refused batch is kept.
    assert [j.id for j in first] == ["before"]
    assert [j.id for j in last] == ["after"]
    ids = {j.id for j in all_jobs(store)}
    assert ids == {j.id for j in before} | {"before", "after"}
    assert one(store, lambda s: s.get_job("new1")) is None
    assert_counts_match(store)


def test_a_batch_repeating_an_id_keeps_nothing(store: Store) -> None:
    (err,) = committed(
        store, lambda s: s.insert_jobs([NewJob("a", id="x"), NewJob("b", id="x")], T0)
    )
    assert isinstance(err, Conflict)
    assert all_jobs(store) == []
    assert counts(store)[JobState.PENDING] == 0


def test_a_rolled_back_transaction_keeps_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.insert_jobs([NewJob("true", id="ghost")], T0)
        raise RuntimeError("abort")
    assert one(store, lambda s: s.get_job("ghost")) is None
    assert counts(store)[JobState.PENDING] == 0


# -- reading ------------------------------------------------------------------------


def test_get_and_list(store: Store) -> None:
    assert one(store, lambda s: s.get_job("nope")) is None
    insert(store, *(NewJob(f"echo {i}", id=f"j{i}") for i in range(5)))
    listed = one(store, lambda s: s.list_jobs(None, 100, 0))
    assert [j.id for j in listed] == ["j0", "j1", "j2", "j3", "j4"]  # enqueue order
    page = one(store, lambda s: s.list_jobs(None, 2, 2))
    assert [j.id for j in page] == ["j2", "j3"]
    (c,) = claim(store, limit=1)
    finish(store, c, JobState.COMPLETED)
    pending = one(store, lambda s: s.list_jobs(JobState.PENDING, 100, 0))
    assert [j.id for j in pending] == ["j1", "j2", "j3", "j4"]
    done = one(store, lambda s: s.list_jobs(JobState.COMPLETED, 100, 0))
    assert [j.id for j in done] == ["j0"]
    assert one(store, lambda s: s.list_jobs(JobState.DEAD, 100, 0)) == []
    assert [j.id for j in all_jobs(store)] == ["j0", "j1", "j2", "j3", "j4"]


# -- claiming -----------------------------------------------------------------------


def test_claim_order_is_run_at_then_enqueue_order(store: Store) -> None:
    insert(store, NewJob("true", id="late", run_at=T0 + 5))
    insert(store, NewJob("true", id="first-a", run_at=T0 + 1))
    insert(store, NewJob("true", id="first-b", run_at=T0 + 1))
    insert(store, NewJob("true", id="mid", run_at=T0 + 3))
    insert(store, NewJob("true", id="now"))  # run_at = T0
    got = claim(store, limit=2, now=T0 + 10)
    assert [c.job.id for c in got] == ["now", "first-a"]
    got = claim(store, limit=10, now=T0 + 10)
    assert [c.job.id for c in got] == ["first-b", "mid", "late"]
    assert claim(store, limit=10, now=T0 + 10) == []


def test_claim_skips_jobs_not_yet_due(store: Store) -> None:
    insert(store, NewJob("true", id="later", run_at=T0 + 100))
    assert one(store, lambda s: s.next_due_at(T0)) == T0 + 100
    assert claim(store, now=T0 + 99.9) == []
    assert get(store, "later").state is JobState.WAITING
    (c,) = claim(store, now=T0 + 100)
    assert c.job.id == "later"
    assert one(store, lambda s: s.next_due_at(T0)) is None


def test_claim_leases_the_job_and_starts_an_attempt(store: Store) -> None:
    insert(store, NewJob("true", id="t", timeout=4.0), NewJob("true", id="d"))
    got = {c.job.id: c for c in claim(store, now=T0 + 1)}
    t, d = got["t"], got["d"]
    assert t.attempt == 1 and t.lease_token
    assert t.lease_token != d.lease_token
    job = get(store, "t", history=True)
    assert job.state is JobState.PROCESSING
    assert job.lease_owner == OWNER and job.lease_token == t.lease_token
    assert job.lease_expires_at == pytest.approx(T0 + 1 + 4.0 + MARGIN)
    assert get(store, "d").lease_expires_at == pytest.approx(T0 + 1 + DEFAULT_TIMEOUT + MARGIN)
    (attempt,) = job.history
    assert attempt.attempt == 1 and attempt.started_at == T0 + 1
    assert attempt.finished_at is None and attempt.outcome is None
    # A leased job is not claimed again.
    assert claim(store, now=T0 + 2) == []


# -- finishing attempts -------------------------------------------------------------


def test_completed_attempt(store: Store) -> None:
    insert(store, NewJob("true", id="ok"))
    (c,) = claim(store)
    assert finish(store, c, JobState.COMPLETED, now=T0 + 2, exit_code=0)
    job = get(store, "ok", history=True)
    assert job.state is JobState.COMPLETED
    assert job.attempts == 1 and job.last_exit_code == 0
    assert job.lease_owner is None and job.lease_token is None and job.lease_expires_at is None
    assert job.updated_at == T0 + 2
    (attempt,) = job.history
    assert (attempt.finished_at, attempt.exit_code, attempt.outcome, attempt.worker) == (
        T0 + 2,
        0,
        "completed",
        "w1",
    )


def test_finish_with_a_wrong_lease_token_is_refused_and_changes_nothing(store: Store) -> None:
    insert(store, NewJob("true", id="x"))
    (c,) = claim(store)
    before = get(store, "x", history=True)
    assert not finish(store, c, JobState.COMPLETED, token="not-the-token")
    assert get(store, "x", history=True) == before
    # The right token still works, once.
    assert finish(store, c, JobState.COMPLETED)
    after = get(store, "x", history=True)
    assert not finish(store, c, JobState.FAILED, exit_code=1)
    assert get(store, "x", history=True) == after
    assert after.state is JobState.COMPLETED


def test_finish_refuses_a_transition_the_state_machine_forbids(store: Store) -> None:
    insert(store, NewJob("true", id="x"))
    (c,) = claim(store)
    assert not can_transition(JobState.PROCESSING, JobState.PROCESSING)
    (err,) = committed(store, lambda s: s.finish_attempt(result_for(c, JobState.PROCESSING)))
    assert isinstance(err, QueuectlError)
    job = get(store, "x", history=True)
    assert job.state is JobState.PROCESSING and job.lease_token == c.lease_token
    assert job.history[0].finished_at is None


def result_for(c: Claim, state: JobState) -> AttemptResult:
    """A plain result moving ``c`` to ``state`` (outcome and counters not checked)."""
    return AttemptResult(
        job_id=c.job.id,
        attempt=c.attempt,
        lease_token=c.lease_token,
        outcome="completed",
        exit_code=0,
        error=None,
        started_at=T0,
        finished_at=T0 + 1,
        next_state=state,
        attempts=1,
        interruptions=0,
        run_at=T0 + 1,
    )


def test_failure_waits_for_its_retry_and_history_grows(store: Store) -> None:
    insert(store, NewJob("false", id="f"))
    (c1,) = claim(store, now=T0)
    assert finish(
        store, c1, JobState.FAILED, now=T0 + 1, exit_code=1, error="exit code 1", run_at=T0 + 3
    )
    job = get(store, "f")
    assert job.state is JobState.FAILED
    assert (job.attempts, job.run_at, job.last_exit_code, job.last_error) == (
        1,
        T0 + 3,
        1,
        "exit code 1",
    )
    assert one(store, lambda s: s.next_due_at(T0)) == T0 + 3
    assert claim(store, now=T0 + 2.9) == []
    (c2,) = claim(store, now=T0 + 3)
    assert c2.attempt == 2 and c2.job.attempts == 1
    assert finish(
        store, c2, JobState.DEAD, now=T0 + 4, exit_code=1, error="exit code 1", attempts=2
    )
    job = get(store, "f", history=True)
    assert job.state is JobState.DEAD and job.attempts == 2
    assert [(a.attempt, a.outcome, a.exit_code) for a in job.history] == [
        (1, "failed", 1),
        (2, "dead", 1),
    ]
    assert job.history[0].finished_at == T0 + 1
    assert job.history[1].started_at == T0 + 3.5  # as the worker reported it


def test_interrupted_attempt_goes_back_to_pending(store: Store) -> None:
    insert(store, NewJob("sleep 9", id="i"))
    (c,) = claim(store)
    assert finish(
        store,
        c,
        JobState.PENDING,
        outcome="interrupted",
        exit_code=None,
        error="worker died",
        attempts=0,
        interruptions=1,
    )
    job = get(store, "i")
    assert (job.state, job.attempts, job.interruptions) == (JobState.PENDING, 0, 1)
    (again,) = claim(store, now=T0 + 2)
    assert again.attempt == 2  # a new row in the history, not a reuse of the first


def test_release_claim_undoes_a_claim_that_never_ran(store: Store) -> None:
    insert(store, NewJob("true", id="r"))
    before = get(store, "r", history=True)
    (c,) = claim(store)
    stale = Claim(job=c.job, attempt=c.attempt, lease_token="someone-else")
    assert not one(store, lambda s: s.release_claim(stale))
    assert get(store, "r").state is JobState.PROCESSING
    assert one(store, lambda s: s.release_claim(c))
    after = get(store, "r", history=True)
    assert after.state is JobState.PENDING
    assert (after.attempts, after.interruptions, after.history) == (0, 0, ())
    assert after.lease_owner is None and after.lease_token is None
    assert after.run_at == before.run_at
    assert not one(store, lambda s: s.release_claim(c))  # once only
    (again,) = claim(store)
    assert again.attempt == 1  # the released claim left no trace in the history
    assert_counts_match(store)


def test_retry_dead(store: Store) -> None:
    insert(store, NewJob("false", id="d"), NewJob("true", id="alive"))
    got = {c.job.id: c for c in claim(store)}
    finish(store, got["d"], JobState.DEAD, exit_code=127, error="not found", interruptions=2)
    retried = one(store, lambda s: s.retry_dead("d", T0 + 50))
    assert retried.state is JobState.PENDING
    assert (retried.attempts, retried.interruptions, retried.run_at) == (0, 0, T0 + 50)
    assert get(store, "d", history=True).history  # the history is kept
    (c,) = claim(store, now=T0 + 50)
    assert c.job.id == "d" and c.attempt == 2
    with pytest.raises(Conflict):
        one(store, lambda s: s.retry_dead("alive", T0))  # processing, not dead
    with pytest.raises(NotFound):
        one(store, lambda s: s.retry_dead("unknown", T0))
    assert get(store, "alive").state is JobState.PROCESSING


# -- leases -------------------------------------------------------------------------


def test_leased_jobs_by_owner_and_expiry(store: Store) -> None:
    insert(store, NewJob("true", id="mine", timeout=1.0), NewJob("true", id="theirs"))
    (mine,) = claim(store, limit=1, now=T0, owner="me")
    (theirs,) = claim(store, limit=1, now=T0, owner="them")
    by_me = one(store, lambda s: s.leased_jobs("me", None))
    assert [(c.job.id, c.lease_token, c.attempt) for c in by_me] == [("mine", mine.lease_token, 1)]
    everyone = one(store, lambda s: s.leased_jobs(None, None))
    assert {c.job.id for c in everyone} == {"mine", "theirs"}
    # "mine" expires at T0 + 1 + MARGIN, "theirs" at T0 + 10 + MARGIN.
    expired = one(store, lambda s: s.leased_jobs(None, T0 + 5 + MARGIN))
    assert [c.job.id for c in expired] == ["mine"]
    assert one(store, lambda s: s.leased_jobs(None, T0)) == []
    finish(store, theirs, JobState.COMPLETED)
    assert one(store, lambda s: s.leased_jobs("them", None)) == []


# -- counts, settings, metrics ------------------------------------------------------


def test_count_by_state_follows_every_transition(store: Store) -> None:
    assert counts(store) == {s: 0 for s in JobState}
    insert(store, *(NewJob("true", id=f"c{i}") for i in range(6)))
    assert_counts_match(store)
    c = {x.job.id: x for x in claim(store, limit=5)}
    assert counts(store)[JobState.PROCESSING] == 5
    finish(store, c["c0"], JobState.COMPLETED)
    finish(store, c["c1"], JobState.FAILED, exit_code=1, run_at=T0 + 100)
    finish(store, c["c2"], JobState.DEAD, exit_code=1)
    finish(store, c["c3"], JobState.PENDING, outcome="interrupted", attempts=0, interruptions=1)
    assert not finish(store, c["c4"], JobState.COMPLETED, token="stale")  # refused: no change
    assert counts(store) == {
        JobState.PENDING: 2,
        JobState.WAITING: 0,
        JobState.BLOCKED: 0,
        JobState.PROCESSING: 1,
        JobState.COMPLETED: 1,
        JobState.FAILED: 1,
        JobState.DEAD: 1,
        JobState.CANCELLED: 0,
    }
    one(store, lambda s: s.retry_dead("c2", T0))
    assert_counts_match(store)
    committed(store, lambda s: s.insert_jobs([NewJob("x", id="c9"), NewJob("x", id="c0")], T0))
    assert_counts_match(store)  # a refused batch leaves the counts alone


def test_settings(store: Store) -> None:
    assert one(store, lambda s: s.get_settings()) == {}
    one(store, lambda s: s.set_setting("max-retries", "3"))
    one(store, lambda s: s.set_setting("max-retries", "5"))
    one(store, lambda s: s.set_setting("workers", "2"))
    assert one(store, lambda s: s.get_settings()) == {"max-retries": "5", "workers": "2"}


def test_attempt_stats(store: Store) -> None:
    insert(store, NewJob("true", id="a"), NewJob("false", id="b"), NewJob("true", id="c"))
    got = {c.job.id: c for c in claim(store)}
    finish(store, got["a"], JobState.COMPLETED)
    finish(store, got["b"], JobState.DEAD, outcome="failed", exit_code=1)
    stats = one(store, lambda s: s.attempt_stats())
    assert stats["attempts_completed"] == 1
    assert stats["attempts_failed"] == 1
    assert stats["mean_seconds_completed"] == pytest.approx(0.5)
    assert "attempts_None" not in stats  # the running attempt of "c" is not counted


def test_limits_and_accounting_are_kept(store: Store) -> None:
    (job,) = insert(store, NewJob("true", id="lim", memory=512 << 20, cpus=1.5, max_procs=64))
    assert (job.memory, job.cpus, job.max_procs) == (512 << 20, 1.5, 64)
    insert(store, NewJob("true", id="plain"))
    plain = get(store, "plain")
    assert (plain.memory, plain.cpus, plain.max_procs) == (None, None, None)
    (c, _) = claim(store, now=T0)
    assert c.job.id == "lim" and c.job.max_procs == 64
    used = dataclasses.replace(
        result_for(c, JobState.COMPLETED), cpu_seconds=0.25, peak_bytes=3 << 20
    )
    assert one(store, lambda s: s.finish_attempts([used])).ok == [True]
    (attempt,) = get(store, "lim", history=True).history
    assert (attempt.cpu_seconds, attempt.peak_bytes) == (0.25, 3 << 20)
    stats = one(store, lambda s: s.attempt_stats())
    assert stats["cpu_seconds_completed"] == 0.25
    assert stats["max_peak_bytes_completed"] == 3 << 20
