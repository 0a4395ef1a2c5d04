"""Store.release_claim: a job claimed ahead of the workers goes back as if never claimed.

The dispatcher claims a few short jobs ahead of its workers (docs/benchmarks.md); a
drain, a scale down or a long wait gives back the ones no worker started.
"""

from __future__ import annotations

from queuectl.protocol import JobState
from queuectld.jobs import NewJob
from queuectld.store.base import Store
from tests.store.test_contract import claim, finish, get, insert, one


def test_released_claim_is_pending_again_with_nothing_charged(store: Store) -> None:
    insert(store, NewJob("true", id="a"), NewJob("true", id="b"))
    first, second = claim(store, limit=2)
    assert one(store, lambda s: s.release_claim(second)) is True
    job = get(store, "b", history=True)
    assert job.state is JobState.PENDING
    assert (job.attempts, job.interruptions, job.history) == (0, 0, ())
    assert job.lease_token is None and job.lease_owner is None
    counts = one(store, lambda s: s.count_by_state())
    assert counts[JobState.PENDING] == 1 and counts[JobState.PROCESSING] == 1
    # Claimed again, it is attempt 1 (the released claim left no row behind).
    (again,) = claim(store, limit=1)
    assert again.job.id == "b" and again.attempt == first.attempt == 1
    finish(store, again, JobState.COMPLETED)
    assert [a.attempt for a in get(store, "b", history=True).history] == [1]


def test_release_under_a_lost_lease_changes_nothing(store: Store) -> None:
    insert(store, NewJob("true", id="a"))
    (c,) = claim(store, limit=1)
    finish(store, c, JobState.COMPLETED)
    assert one(store, lambda s: s.release_claim(c)) is False
    assert get(store, "a").state is JobState.COMPLETED
