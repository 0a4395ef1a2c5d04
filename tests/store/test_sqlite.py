"""What only the SQLite store promises: durability settings, schema, indexes, flat claims.

These look inside the database file (pragmas, query plans, VM instruction counts),
so they use the SQLite connection directly; the behaviour every backend shares is in
``test_contract.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl.errors import InternalError
from queuectl.protocol import JobState
from queuectld.jobs import NewJob
from queuectld.store.base import NodeRow
from queuectld.store.sqlite import SCHEMA_VERSION, Q, SQLiteStore
from tests.store.test_contract import result_for

T0 = 1_000_000.0


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "queue.db")
    store.open()
    yield store
    store.close()


def plan(db: sqlite3.Connection, sql: str, params: dict[str, object]) -> str:
    rows = db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return "\n".join(str(row[3]) for row in rows)


def bulk_pending(db: sqlite3.Connection, count: int, run_at: float, prefix: str) -> None:
    """Add ``count`` pending jobs in one statement (test set-up only)."""
    with db:
        db.execute("BEGIN")
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
            "INSERT INTO jobs (id, command, state, created_at, updated_at, run_at) "
            "SELECT :prefix || i, 'true', 'pending', :t, :t, :t FROM n",
            {"count": count, "t": run_at, "prefix": prefix},
        )


def vm_steps_of_one_claim(store: SQLiteStore, now: float) -> int:
    """SQLite VM instructions one claim (select, lease, attempt row, triggers) executes."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store.db.set_progress_handler(count, 1)
    try:
        with store.transaction():
            (claim,) = store.claim_due("node", 1, now, 10.0, 30.0)
    finally:
        store.db.set_progress_handler(None, 1)
    assert claim.job.state is JobState.PROCESSING
    return steps


def test_wal_and_full_sync(sqlite_store: SQLiteStore) -> None:
    db = sqlite_store.db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_schema_version_is_recorded_in_meta(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    store = SQLiteStore(path)
    store.open()
    store.close()
    raw = sqlite3.connect(path)
    (value,) = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert int(value) == SCHEMA_VERSION
    # A database from a newer queuectld is refused rather than misread.
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    newer = SQLiteStore(path)
    with pytest.raises(InternalError, match="newer"):
        newer.open()
    newer.close()


def test_claim_and_next_due_use_the_partial_indexes(sqlite_store: SQLiteStore) -> None:
    db = sqlite_store.db
    db.execute("ANALYZE")
    params = {
        "now": T0,
        "limit": 1,
        "queue": "default",
        "owner": "n",
        "default_timeout": 1.0,
        "lease_margin": 1.0,
    }
    for name, index in (
        ("ready_in_queue", "jobs_ready"),
        ("claim_from_queue", "jobs_ready"),
        ("next_timed_at", "jobs_timed"),
        ("promote_due", "jobs_timed"),
    ):
        text = plan(db, Q[name], params)
        assert index in text, text
        assert "TEMP B-TREE" not in text, text  # no sort: the index gives the order


def test_a_batch_costs_a_constant_number_of_statements(sqlite_store: SQLiteStore) -> None:
    """Claiming, recording and giving back 5 or 50 jobs runs the same statements."""
    store = sqlite_store

    def statements(n: int) -> list[str]:
        """Named statements the store sent to SQLite (an executemany counts once)."""
        sent: list[str] = []
        run, run_many = store._run, store._run_many

        def counted_run(name: str, params: Any = None) -> Any:
            sent.append(name)
            return run(name, params)

        def counted_many(name: str, rows: Any) -> None:
            sent.append(name)
            run_many(name, rows)

        with store.transaction():
            store.insert_jobs([NewJob("true") for _ in range(2 * n)], T0)
        store._run, store._run_many = counted_run, counted_many  # type: ignore[method-assign]
        try:
            with store.transaction():
                claims = store.claim_due("node", 2 * n, T0, 10.0, 30.0)
                assert len(claims) == 2 * n
                results = [result_for(c, JobState.COMPLETED) for c in claims[:n]]
                assert all(store.finish_attempts(results).ok)
                assert all(store.release_claims(claims[n:]))
        finally:
            del store._run, store._run_many
        return sent

    small, large = statements(5), statements(50)
    assert small == large
    # promote, counts, queue settings, one read per queue with ready jobs, the claim,
    # the attempts rows; then the record and the give-back.
    assert len(large) <= 13, large


def test_counts_kept_by_triggers_match_the_rows(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    with store.transaction():
        store.insert_jobs([NewJob("true", id=f"j{i}") for i in range(10)], T0)
        claims = store.claim_due("node", 4, T0, 10.0, 30.0)
    with store.transaction():
        for c, state in zip(
            claims,
            [JobState.COMPLETED, JobState.FAILED, JobState.DEAD, JobState.PENDING],
            strict=True,
        ):
            store.finish_attempt(result_for(c, state))
        store.retry_dead(claims[2].job.id, T0)
    actual = dict(store.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    kept = dict(store.db.execute("SELECT state, n FROM job_counts").fetchall())
    assert {k: v for k, v in kept.items() if v} == actual
    assert sum(kept.values()) == 10


def test_claim_cost_does_not_grow_with_waiting_jobs(tmp_path: Path) -> None:
    """The claim path executes the same VM instructions with 100 or 200,000 pending jobs."""
    small = SQLiteStore(tmp_path / "small.db")
    large = SQLiteStore(tmp_path / "large.db")
    small.open()
    large.open()
    try:
        bulk_pending(small.db, 100, T0, "s")
        bulk_pending(large.db, 200_000, T0, "l")
        # Jobs not due yet sit in the same index; they must not be walked either.
        bulk_pending(large.db, 50_000, T0 + 3600, "future")
        with large.transaction():
            assert large.count_by_state()[JobState.PENDING] == 250_000
        small_steps = vm_steps_of_one_claim(small, T0 + 1)
        large_steps = vm_steps_of_one_claim(large, T0 + 1)
        assert large_steps <= small_steps * 1.5, (small_steps, large_steps)
        # And the next claims stay as cheap.
        assert vm_steps_of_one_claim(large, T0 + 1) <= small_steps * 1.5
    finally:
        small.close()
        large.close()


def test_a_version_1_database_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    """Upgrading queuectld keeps every job: states, attempts, leases; counts rebuilt."""
    path = tmp_path / "queue.db"
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parent / "schema_v1.sql").read_text())
    raw.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    rows = [
        # id, state, run_at, updated_at: a delayed pending job becomes waiting
        ("now", "pending", T0, T0),
        ("delayed", "pending", T0 + 500, T0),
        ("retrying", "failed", T0 + 50, T0),
        ("running", "processing", T0, T0),
        ("done", "completed", T0, T0),
    ]
    for job_id, state, run_at, updated in rows:
        raw.execute(
            "INSERT INTO jobs (id, command, state, created_at, updated_at, run_at, runs,"
            " lease_token) VALUES (?, 'true', ?, ?, ?, ?, 1, 'tok')",
            (job_id, state, T0, updated, run_at),
        )
    seq = raw.execute("SELECT seq FROM jobs WHERE id = 'done'").fetchone()[0]
    raw.execute("INSERT INTO attempts (job_seq, attempt, started_at) VALUES (?, 1, ?)", (seq, T0))
    raw.commit()
    raw.close()

    store = SQLiteStore(path)
    store.open()
    try:
        assert store.schema_version() == SCHEMA_VERSION
        with store.transaction():
            jobs = {j.id: j for j in store.iter_all()}
            assert {k: j.state.value for k, j in jobs.items()} == {
                "now": "pending",
                "delayed": "waiting",
                "retrying": "failed",
                "running": "processing",
                "done": "completed",
            }
            assert all(j.queue == "default" and j.priority == 0 for j in jobs.values())
            assert jobs["running"].lease_token == "tok"
            done = store.get_job("done", with_history=True)
            assert done is not None and len(done.history) == 1
            assert done.memory is None and done.history[0].cpu_seconds is None
            assert store.count_by_queue() == {
                "default": {
                    JobState.PENDING: 1,
                    JobState.WAITING: 1,
                    JobState.FAILED: 1,
                    JobState.PROCESSING: 1,
                    JobState.COMPLETED: 1,
                }
            }
            assert [c.job.id for c in store.claim_due("n", 10, T0 + 100, 10.0, 1.0)] == [
                "now",
                "retrying",
            ]
            assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()


def test_a_version_2_database_gets_limits_and_accounting(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parent / "schema_v2.sql").read_text())
    raw.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    raw.execute(
        "INSERT INTO jobs (id, command, state, created_at, updated_at, run_at) "
        "VALUES ('old', 'echo old', 'completed', 1, 1, 1)"
    )
    raw.execute(
        "INSERT INTO attempts (job_seq, attempt, started_at, finished_at, outcome) "
        "VALUES (1, 1, 1, 2, 'completed')"
    )
    raw.commit()
    raw.close()
    store = SQLiteStore(path)
    store.open()
    try:
        assert store.schema_version() == SCHEMA_VERSION == 5
        with store.transaction():
            job = store.get_job("old", with_history=True)
            assert job is not None and job.command == "echo old" and job.memory is None
            assert job.history[0].outcome == "completed" and job.history[0].cpu_seconds is None
            (new,) = store.insert_jobs([NewJob("true", id="new", cpus=0.5)], 3.0)
            assert new.cpus == 0.5
            assert store.count_by_state()[JobState.COMPLETED] == 1
    finally:
        store.close()


def test_a_version_3_database_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    """Version 4 (workflows) rebuilds the jobs table for `blocked`: every job is kept."""
    path = tmp_path / "queue.db"
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parent / "schema_v3.sql").read_text())
    raw.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    raw.execute(
        "INSERT INTO jobs (id, command, state, queue, priority, unique_key, created_at,"
        " updated_at, run_at) VALUES ('mail', 'true', 'waiting', 'mail', 5, 'k', ?, ?, ?)",
        (T0, T0, T0 + 50),
    )
    raw.execute(
        "INSERT INTO jobs (id, command, state, created_at, updated_at, run_at)"
        " VALUES ('done', 'true', 'completed', ?, ?, ?)",
        (T0, T0, T0),
    )
    raw.commit()
    raw.close()

    store = SQLiteStore(path)
    store.open()
    try:
        assert store.schema_version() == SCHEMA_VERSION == 5
        with store.transaction():
            mail = store.get_job("mail")
            assert mail is not None
            assert (mail.state, mail.queue, mail.priority, mail.unique_key) == (
                JobState.WAITING,
                "mail",
                5,
                "k",
            )
            (child,) = store.insert_jobs([NewJob("true", id="c", after=("done",))], T0)
            assert child.state is JobState.PENDING  # its parent had completed
            assert store.count_by_queue()["mail"] == {JobState.WAITING: 1}
            assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()


def test_a_version_4_database_gets_the_nodes_table(tmp_path: Path) -> None:
    """Version 5 (cluster membership) adds `nodes`; jobs and counts are kept."""
    path = tmp_path / "queue.db"
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parent / "schema_v4.sql").read_text())
    raw.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    raw.execute(
        "INSERT INTO jobs (id, command, state, lease_owner, created_at, updated_at, run_at)"
        " VALUES ('run', 'true', 'processing', 'n1', ?, ?, ?)",
        (T0, T0, T0),
    )
    raw.commit()
    raw.close()

    store = SQLiteStore(path)
    store.open()
    try:
        assert store.schema_version() == SCHEMA_VERSION == 5
        with store.transaction():
            assert store.get_job("run") is not None
            assert store.count_by_queue() == {"default": {JobState.PROCESSING: 1}}
            store.register_node(NodeRow("n1", "h", 1, T0, T0, 2, "/run/q.sock"))
            assert [(n.name, n.running) for n in store.nodes()] == [("n1", 1)]
    finally:
        store.close()


def test_claim_cost_is_the_same_after_a_large_purge(tmp_path: Path) -> None:
    """100,000 completed jobs purged (in batches, as retention does): the next claims
    execute the same VM instructions as before, and the file gives its pages back."""
    store = SQLiteStore(tmp_path / "queue.db")
    store.open()
    try:
        bulk_pending(store.db, 100, T0, "p")
        before = vm_steps_of_one_claim(store, T0 + 1)
        with store.db:
            store.db.execute("BEGIN")
            store.db.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)"
                " INSERT INTO jobs (id, command, state, created_at, updated_at, run_at)"
                " SELECT 'c' || i, 'true', 'completed', :t, :t, :t FROM n",
                {"t": T0},
            )
        size = (tmp_path / "queue.db").stat().st_size
        after = (float("-inf"), -1)
        purged = 0
        while True:
            with store.transaction():
                batch = store.purge_jobs(JobState.COMPLETED, T0 + 10, None, 5000, after)
                if not batch.ids:
                    store.release_space()
            if not batch.ids:
                break
            purged += len(batch.ids)
            after = (batch.after_at, batch.after_seq)
        assert purged == 100_000
        assert vm_steps_of_one_claim(store, T0 + 2) <= before * 1.2
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert store.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert (tmp_path / "queue.db").stat().st_size < size / 4
    finally:
        store.close()
