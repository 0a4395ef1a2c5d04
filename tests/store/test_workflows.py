"""The Store contract for workflows: dependencies, purge, schedules.

Part of the contract suite: it runs on every backend in ``BACKENDS``.
"""

from __future__ import annotations

import dataclasses

import pytest

from queuectl.errors import Conflict, InvalidRequest, NotFound
from queuectl.protocol import JobState
from queuectld.jobs import NewJob
from queuectld.store.base import ScheduleRow, Store
from tests.store.test_contract import (
    T0,
    all_jobs,
    assert_counts_match,
    claim,
    committed,
    finish,
    get,
    insert,
    one,
    result_for,
)


def states(store: Store) -> dict[str, str]:
    return {j.id: j.state.value for j in all_jobs(store)}


# -- dependencies -----------------------------------------------------------------------


def test_a_child_is_blocked_until_its_parents_complete(store: Store) -> None:
    insert(store, NewJob("true", id="a"), NewJob("true", id="b"))
    (child,) = insert(store, NewJob("true", id="c", after=("a", "b")))
    assert child.state is JobState.BLOCKED
    assert [p.id for p in child.parents] == ["a", "b"]
    claims = {c.job.id: c for c in claim(store)}
    assert set(claims) == {"a", "b"}  # never the blocked one
    finish(store, claims["a"], JobState.COMPLETED)
    assert get(store, "c").state is JobState.BLOCKED
    finish(store, claims["b"], JobState.COMPLETED, exit_code=0)
    assert get(store, "c").state is JobState.PENDING
    (c,) = claim(store, now=T0 + 2)
    assert [(p.id, p.state, p.exit_code) for p in c.job.parents] == [
        ("a", JobState.COMPLETED, 0),
        ("b", JobState.COMPLETED, 0),
    ]
    assert get(store, "a", history=True).children == ("c",)
    assert_counts_match(store)


def test_a_delayed_child_waits_for_its_time_after_its_parent(store: Store) -> None:
    insert(store, NewJob("true", id="a"))
    insert(store, NewJob("true", id="c", after=("a",), run_at=T0 + 100))
    (a,) = claim(store)
    finish(store, a, JobState.COMPLETED)
    job = get(store, "c")
    assert job.state is JobState.WAITING and job.run_at == T0 + 100


def test_a_dead_parent_cancels_the_chain_and_after_any_runs(store: Store) -> None:
    insert(store, NewJob("true", id="p"))
    insert(
        store,
        NewJob("true", id="c1", after=("p",)),
        NewJob("true", id="c2", after=("c1",)),
        NewJob("true", id="any", after_any=("c1",)),
    )
    (p,) = claim(store)
    recorded = one(store, lambda s: s.finish_attempts([result_for(p, JobState.DEAD)]))
    assert recorded.ok == [True]
    assert {j.id: j.last_error for j in recorded.settled.cancelled} == {
        "c1": "parent job 'p' ended dead",
        "c2": "parent job 'c1' ended cancelled",
    }
    assert [j.id for j in recorded.settled.unblocked] == ["any"]
    assert states(store) == {"p": "dead", "c1": "cancelled", "c2": "cancelled", "any": "pending"}
    assert_counts_match(store)


def test_parents_already_final_settle_the_child_at_once(store: Store) -> None:
    insert(store, NewJob("true", id="ok"), NewJob("true", id="bad"))
    claims = {c.job.id: c for c in claim(store)}
    finish(store, claims["ok"], JobState.COMPLETED)
    finish(store, claims["bad"], JobState.DEAD, exit_code=1)
    (ready, doomed) = insert(
        store, NewJob("true", id="r", after=("ok",)), NewJob("true", id="d", after=("bad",))
    )
    assert ready.state is JobState.PENDING
    assert doomed.state is JobState.CANCELLED
    assert doomed.last_error == "parent job 'bad' ended dead"


def test_unknown_parents_and_cycles_store_nothing(store: Store) -> None:
    with pytest.raises(NotFound, match="'nope', which does not exist"):
        insert(store, NewJob("true", id="x"), NewJob("true", id="y", after=("nope",)))
    with pytest.raises(InvalidRequest, match="wait on each other"):
        insert(store, NewJob("true", id="s", after=("s",)))
    with pytest.raises(InvalidRequest, match="'a' -> 'b' -> 'a'"):
        insert(store, NewJob("true", id="a", after=("b",)), NewJob("true", id="b", after=("a",)))
    assert all_jobs(store) == []
    # A later line of the same request may be a parent, as long as there is no cycle.
    insert(store, NewJob("true", id="child", after=("parent",)), NewJob("true", id="parent"))
    assert states(store) == {"child": "blocked", "parent": "pending"}


def test_cancel_takes_blocked_jobs_and_their_dependents(store: Store) -> None:
    insert(store, NewJob("true", id="root", run_at=T0 + 1000))
    insert(store, NewJob("true", id="b1", after=("root",)))
    insert(store, NewJob("true", id="b2", after=("b1",)))
    cancelled = one(store, lambda s: s.cancel_jobs(["b1"], T0, "by test"))
    assert [(j.id, j.last_error) for j in cancelled] == [
        ("b1", "by test"),
        ("b2", "parent job 'b1' ended cancelled"),
    ]
    assert get(store, "root").state is JobState.WAITING


def test_retry_blocks_a_child_again_or_refuses_it(store: Store) -> None:
    insert(store, NewJob("true", id="p"))
    insert(store, NewJob("true", id="c", after=("p",)))
    (p,) = claim(store)
    finish(store, p, JobState.DEAD, exit_code=1)
    assert get(store, "c").state is JobState.CANCELLED
    (err,) = committed(store, lambda s: s.retry_jobs(["c"], T0 + 2))
    assert isinstance(err, Conflict) and "retry the parent first" in err.message
    assert get(store, "c").state is JobState.CANCELLED  # nothing changed
    retried = one(store, lambda s: s.retry_jobs(["p", "c"], T0 + 3))
    assert {j.id: j.state for j in retried} == {"p": JobState.PENDING, "c": JobState.BLOCKED}


# -- purge ---------------------------------------------------------------------------


def test_purge_removes_old_final_jobs_in_batches_and_keeps_needed_parents(store: Store) -> None:
    insert(store, *(NewJob("true", id=f"j{i}") for i in range(5)), NewJob("true", id="par"))
    for c in claim(store):
        finish(store, c, JobState.COMPLETED, now=T0 + 1)
    insert(store, NewJob("true", id="later", run_at=T0 + 1000), now=T0 + 2)
    insert(store, NewJob("true", id="kid", after=("par", "later")), now=T0 + 2)
    dry = one(store, lambda s: s.purge_jobs(JobState.COMPLETED, T0 + 5, None, 100, dry_run=True))
    assert sorted(dry.ids) == [f"j{i}" for i in range(5)]  # `par` is needed by `kid`
    assert len(all_jobs(store)) == 8
    first = one(store, lambda s: s.purge_jobs(JobState.COMPLETED, T0 + 5, None, 3))
    after = (first.after_at, first.after_seq)
    second = one(store, lambda s: s.purge_jobs(JobState.COMPLETED, T0 + 5, None, 3, after))
    assert len(first.ids) == 3 and len(second.ids) == 2
    assert set(states(store)) == {"par", "later", "kid"}
    assert [p.id for p in get(store, "kid", history=True).parents] == ["par", "later"]
    none = one(store, lambda s: s.purge_jobs(JobState.COMPLETED, T0, None, 100))
    assert none.ids == []  # not older than the cut-off
    assert_counts_match(store)


# -- schedules ----------------------------------------------------------------------------


def test_schedules_are_stored_changed_and_progress(store: Store) -> None:
    row = ScheduleRow(
        name="nightly",
        cron="0 3 * * *",
        tz="UTC",
        job='{"command": "true"}',
        overlap="skip",
        catch_up="latest",
        paused=False,
        owner_uid=7,
        created_at=T0,
        next_at=T0 + 60,
    )
    one(store, lambda s: s.put_schedule(row, False))
    (err,) = committed(store, lambda s: s.put_schedule(row, False))
    assert isinstance(err, Conflict)
    one(store, lambda s: s.schedule_progress("nightly", T0 + 120, T0 + 60, "nightly.1"))
    assert one(store, lambda s: s.next_schedule_at()) == T0 + 120
    changed = dataclasses.replace(row, cron="0 4 * * *", next_at=T0 + 200)
    one(store, lambda s: s.put_schedule(changed, True))
    got = one(store, lambda s: s.get_schedule("nightly"))
    assert (got.cron, got.next_at, got.last_at, got.last_job) == (
        "0 4 * * *",
        T0 + 200,
        T0 + 60,
        "nightly.1",
    )
    assert one(store, lambda s: s.set_schedule_paused("nightly", True, T0 + 200))
    assert one(store, lambda s: s.next_schedule_at()) is None
    assert one(store, lambda s: s.delete_schedule("nightly"))
    assert one(store, lambda s: s.schedules()) == []
