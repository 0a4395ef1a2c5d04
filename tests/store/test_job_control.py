"""The Store contract for job control: claim order, queues' limits, cancel, retry, keys.

Part of the contract suite: it runs on every backend in ``BACKENDS``.
"""

from __future__ import annotations

import pytest

from queuectl.errors import Conflict, NotFound
from queuectl.protocol import JobState, SortKey
from queuectld.jobs import NewJob
from queuectld.queues import QueueLimits
from queuectld.store.base import JobFilter, Store
from tests.store.test_contract import (
    T0,
    assert_counts_match,
    claim,
    finish,
    get,
    insert,
    one,
)


def ids(claims: list) -> list[str]:  # type: ignore[type-arg]
    return [c.job.id for c in claims]


def set_queue(store: Store, **kw: object) -> None:
    one(store, lambda s: s.set_queue(QueueLimits(**kw)))  # type: ignore[arg-type]


# -- claim order --------------------------------------------------------------------


def test_higher_priority_first_then_arrival_order(store: Store) -> None:
    insert(
        store,
        NewJob("true", id="low", priority=-5),
        NewJob("true", id="a0", priority=0),
        NewJob("true", id="high", priority=10),
        NewJob("true", id="b0", priority=0),
        NewJob("true", id="mid", priority=5),
    )
    assert ids(claim(store, limit=3)) == ["high", "mid", "a0"]
    assert ids(claim(store, limit=3)) == ["b0", "low"]


def test_priority_spans_queues(store: Store) -> None:
    insert(
        store,
        NewJob("true", id="m1", queue="mail", priority=1),
        NewJob("true", id="d1", queue="default"),
        NewJob("true", id="m2", queue="mail", priority=9),
        NewJob("true", id="r1", queue="reports", priority=3),
    )
    assert ids(claim(store, limit=10)) == ["m2", "r1", "m1", "d1"]


def test_a_delayed_job_waits_and_a_past_time_means_now(store: Store) -> None:
    (later, past) = insert(
        store,
        NewJob("true", id="later", run_at=T0 + 60),
        NewJob("true", id="past", run_at=T0 - 60),
    )
    assert later.state is JobState.WAITING
    assert past.state is JobState.PENDING
    assert one(store, lambda s: s.next_due_at(T0)) == T0 + 60
    assert ids(claim(store, now=T0 + 59.9)) == ["past"]
    assert get(store, "later").state is JobState.WAITING
    assert ids(claim(store, now=T0 + 60)) == ["later"]
    assert_counts_match(store)


# -- named queues -------------------------------------------------------------------


def test_a_paused_queue_starts_nothing_and_others_go_on(store: Store) -> None:
    insert(store, NewJob("true", id="m1", queue="mail"), NewJob("true", id="d1"))
    set_queue(store, name="mail", paused=True)
    assert ids(claim(store)) == ["d1"]
    assert claim(store) == []
    set_queue(store, name="mail", paused=False)
    assert ids(claim(store)) == ["m1"]


def test_concurrency_counts_running_jobs(store: Store) -> None:
    insert(store, *(NewJob("true", id=f"j{i}", queue="one") for i in range(4)))
    set_queue(store, name="one", concurrency=2)
    first = claim(store, limit=10)
    assert ids(first) == ["j0", "j1"]
    assert claim(store) == []  # two running
    finish(store, first[0], JobState.COMPLETED)
    assert ids(claim(store)) == ["j2"]
    assert one(store, lambda s: s.next_due_at(T0)) is None  # an outcome wakes it, not time


def test_rate_limit_is_a_token_bucket(store: Store) -> None:
    insert(store, *(NewJob("true", id=f"r{i}", queue="slow") for i in range(6)))
    set_queue(store, name="slow", rate_count=2, rate_period=1.0)
    assert ids(claim(store, limit=10, now=T0)) == ["r0", "r1"]  # a full bucket: 2
    assert claim(store, limit=10, now=T0 + 0.4) == []
    assert one(store, lambda s: s.next_due_at(T0 + 0.4)) == pytest.approx(T0 + 0.5)
    assert ids(claim(store, limit=10, now=T0 + 0.5)) == ["r2"]
    assert ids(claim(store, limit=10, now=T0 + 10)) == ["r3", "r4"]  # never more than 2


def test_queue_settings_persist_and_a_new_rate_refills(backend: object) -> None:
    from tests.store.conftest import Backend

    assert isinstance(backend, Backend)
    store = backend.open()
    set_queue(store, name="q", concurrency=3, rate_count=5, rate_period=60.0, paused=True)
    backend.close_all()
    again = backend.open()
    limits = one(again, lambda s: s.queue_limits())["q"]
    assert (limits.concurrency, limits.rate, limits.paused) == (3, "5/m", True)
    one(again, lambda s: s.set_tokens("q", 0.0, T0))
    set_queue(again, name="q", rate_count=5, rate_period=1.0)
    assert one(again, lambda s: s.queue_limits())["q"].tokens is None  # full again


def test_counts_by_queue(store: Store) -> None:
    insert(
        store,
        NewJob("true", id="a", queue="mail"),
        NewJob("true", id="b", queue="mail", run_at=T0 + 9),
        NewJob("true", id="c"),
    )
    claim(store, limit=1)
    by_queue = one(store, lambda s: s.count_by_queue())
    assert by_queue == {
        "mail": {JobState.PROCESSING: 1, JobState.WAITING: 1},
        "default": {JobState.PENDING: 1},
    }


# -- cancel and retry ---------------------------------------------------------------


def test_cancel_ends_unstarted_jobs_all_or_nothing(store: Store) -> None:
    insert(
        store,
        NewJob("true", id="p"),
        NewJob("true", id="w", run_at=T0 + 100),
        NewJob("true", id="f"),
        NewJob("true", id="r"),
    )
    running = {c.job.id: c for c in claim(store, limit=2)}  # p and f (w waits)
    finish(store, running["f"], JobState.FAILED, exit_code=1, run_at=T0 + 50)
    with pytest.raises(Conflict, match=r"'p' is processing.*kill"):
        one(store, lambda s: s.cancel_jobs(["w", "p"], T0, "by test"))
    assert get(store, "w").state is JobState.WAITING  # nothing changed
    with pytest.raises(NotFound, match="'nope'"):
        one(store, lambda s: s.cancel_jobs(["w", "nope"], T0, "by test"))
    done = one(store, lambda s: s.cancel_jobs(["w", "f", "r"], T0 + 2, "by test"))
    assert {j.id for j in done} == {"w", "f", "r"}
    assert get(store, "f").state is JobState.CANCELLED
    assert get(store, "f").last_error == "by test"
    assert ids(claim(store, now=T0 + 200)) == []  # cancelled jobs never run
    assert_counts_match(store)


def test_retry_runs_finished_jobs_again_keeping_history(store: Store) -> None:
    insert(store, NewJob("true", id="done"), NewJob("true", id="gone"), NewJob("true", id="p"))
    c = {x.job.id: x for x in claim(store, limit=2)}
    finish(store, c["done"], JobState.COMPLETED)
    one(store, lambda s: s.cancel_jobs(["p"], T0, "by test"))
    with pytest.raises(Conflict, match="'gone' is processing"):
        one(store, lambda s: s.retry_jobs(["done", "gone"], T0 + 5))
    again = one(store, lambda s: s.retry_jobs(["done", "p"], T0 + 5))
    assert {j.state for j in again} == {JobState.PENDING}
    (c2, c3) = claim(store, limit=5, now=T0 + 6)
    assert {c2.job.id, c3.job.id} == {"done", "p"}
    history = get(store, "done", history=True).history
    assert [a.attempt for a in history] == [1, 2]
    with pytest.raises(Conflict, match="only jobs in the DLQ"):
        one(store, lambda s: s.retry_dead("done", T0))


# -- unique keys --------------------------------------------------------------------


def test_a_unique_key_stores_one_unfinished_job(store: Store) -> None:
    first = one(store, lambda s: s.insert_unique([NewJob("true", id="k1", unique_key="K")], T0))
    assert first.existing == [False]
    again = one(
        store,
        lambda s: s.insert_unique(
            [NewJob("true", id="k2", unique_key="K"), NewJob("true", id="k3", unique_key="K")],
            T0,
        ),
    )
    assert [j.id for j in again.jobs] == ["k1", "k1"] and again.existing == [True, True]
    assert get(store, "k1").unique_key == "K"
    assert one(store, lambda s: s.get_job("k2")) is None
    (c,) = claim(store)
    finish(store, c, JobState.COMPLETED)
    later = one(store, lambda s: s.insert_unique([NewJob("true", id="k4", unique_key="K")], T0))
    assert later.existing == [False]  # the key is free once its job is final
    with pytest.raises(Conflict, match="'k4' holds the unique key"):
        one(store, lambda s: s.retry_jobs(["k1"], T0))


def test_one_batch_with_a_repeated_key_stores_it_once(store: Store) -> None:
    got = one(
        store,
        lambda s: s.insert_unique(
            [NewJob("a", unique_key="K"), NewJob("b"), NewJob("c", unique_key="K")], T0
        ),
    )
    assert got.existing == [False, False, True]
    assert got.jobs[0].id == got.jobs[2].id
    assert len(one(store, lambda s: list(s.iter_all()))) == 2


# -- reading ------------------------------------------------------------------------


def test_find_jobs_filters_and_sorts(store: Store) -> None:
    insert(store, NewJob("true", id="old", queue="a", priority=1), now=T0)
    insert(store, NewJob("true", id="new", queue="b", priority=5), now=T0 + 100)
    insert(store, NewJob("true", id="mid", queue="a", priority=9), now=T0 + 50)

    def find(**kw: object) -> list[str]:
        where = JobFilter(**kw)  # type: ignore[arg-type]
        return [j.id for j in one(store, lambda s: s.find_jobs(where, 10, 0))]

    assert find() == ["old", "new", "mid"]
    assert find(queue="a") == ["old", "mid"]
    assert find(since=T0 + 40) == ["new", "mid"]
    assert find(sort=SortKey.NEWEST) == ["mid", "new", "old"]
    assert find(sort=SortKey.PRIORITY) == ["mid", "new", "old"]
    assert one(store, lambda s: s.count_jobs(JobFilter(queue="a", since=T0 + 1))) == 1


def test_job_options_round_trip(store: Store) -> None:
    insert(
        store,
        NewJob(
            "true",
            id="o",
            env={"A": "1", "B": "two words"},
            backoff_base=3.0,
            backoff_max=60.0,
            jitter=0.25,
            queue="q",
            priority=-3,
        ),
    )
    job = get(store, "o")
    assert job.env == {"A": "1", "B": "two words"}
    assert (job.backoff_base, job.backoff_max, job.jitter) == (3.0, 60.0, 0.25)
    assert (job.queue, job.priority) == ("q", -3)
