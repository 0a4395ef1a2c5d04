"""Churn on PostgreSQL: 100,000 jobs through the queue (enqueued, claimed, finished,
purged by retention) leave the claim as cheap as before.

Cost is counted in buffers (pages) the claim touches, from ``EXPLAIN (ANALYZE,
BUFFERS)``: a count, not a time, so a loaded machine does not change it. Dead index
entries of jobs that left ``pending`` would show up there first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from queuectl.protocol import JobState
from queuectld.jobs import AttemptResult, NewJob
from queuectld.store.postgres import PostgresStore, Q
from tests.pg import PG_URL, pg_schema
from tests.store.test_contract import DEFAULT_TIMEOUT, MARGIN, one

CHURN = 100_000
BATCH = 2_000
BACKLOG = 1_000  # pending jobs that stay while the others churn through


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    with pg_schema() as schema:
        s = PostgresStore(PG_URL, schema)
        s.open()
        yield s
        s.close()


def claim_buffers(store: PostgresStore) -> int:
    """Pages one claim of one job touches (rolled back: the store stays the same)."""
    params = {
        "queue": "default",
        "limit": 1,
        "now": time.time(),
        "owner": "probe",
        "default_timeout": DEFAULT_TIMEOUT,
        "lease_margin": MARGIN,
    }
    with store.pool.connection() as conn:
        row = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Q["claim_from_queue"], params
        ).fetchone()
        conn.rollback()
    assert row is not None
    plan = row["QUERY PLAN"]
    plan = plan if isinstance(plan, list) else json.loads(plan)
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def test_a_hundred_thousand_jobs_through_the_queue_leave_claims_as_cheap(
    store: PostgresStore,
) -> None:
    now = time.time()
    backlog = [NewJob("true", priority=-1) for _ in range(BACKLOG)]
    one(store, lambda s: s.add_jobs(backlog, now))
    before = claim_buffers(store)

    done = 0
    while done < CHURN:
        batch = [NewJob("true", priority=1) for _ in range(BATCH)]
        one(store, lambda s, b=batch: s.add_jobs(b, time.time()))  # type: ignore[misc]
        claims = one(
            store, lambda s: s.claim_due("churn", BATCH, time.time(), DEFAULT_TIMEOUT, MARGIN)
        )
        assert len(claims) == BATCH and all(c.job.priority == 1 for c in claims)
        t = time.time()
        results = [
            AttemptResult(
                c.job.id,
                c.attempt,
                c.lease_token,
                "completed",
                0,
                None,
                t,
                t,
                JobState.COMPLETED,
                1,
                0,
                t,
            )
            for c in claims
        ]
        assert all(one(store, lambda s, r=results: s.finish_attempts(r).ok))  # type: ignore[misc]
        # Retention: everything finished so far goes, in the daemon's small batches.
        while one(
            store, lambda s: s.purge_jobs(JobState.COMPLETED, time.time() + 1, None, 500).ids
        ):
            pass
        done += BATCH
        if done % (10 * BATCH) == 0:
            store.sweep_dead_rows()  # the daemon's retention pass does this once a minute

    counts = one(store, lambda s: s.count_by_state())
    assert counts[JobState.PENDING] == BACKLOG and counts[JobState.COMPLETED] == 0
    after = claim_buffers(store)
    print(f"\nclaim of one job: {before} pages before, {after} after {CHURN:,} jobs went through")
    assert after <= 3 * before + 10, (before, after)
