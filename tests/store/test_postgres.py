"""What only the PostgreSQL store promises: several hosts on one schema, its schema
version, losing the connection, wake-ups, folded counts, the claim's index.

Each test gets a fresh schema (``tests/pg.py``); PostgreSQL must be running (the tests
fail, not skip, without it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
import psycopg_pool
import pytest
from psycopg import errors as pg_errors

from queuectl.errors import InternalError, StorageFull, StoreUnavailable
from queuectl.protocol import JobState
from queuectld.jobs import Claim, Job, NewJob
from queuectld.queues import QueueLimits
from queuectld.scheduler import fire_due, next_tick
from queuectld.store import open_store
from queuectld.store.base import JobFilter, NodeRow, ScheduleRow
from queuectld.store.postgres import FOLD_OVER, SCHEMA_VERSION, PostgresStore, Q
from tests.pg import PG_URL, pg_schema
from tests.store.test_contract import (
    DEFAULT_TIMEOUT,
    MARGIN,
    T0,
    assert_counts_match,
    claim,
    finish,
    insert,
    one,
)

T = TypeVar("T")
WAIT = 30.0  # seconds an expected event may take on a loaded machine


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema() as name:
        yield name


@pytest.fixture
def hosts(schema: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema: two daemons on two hosts."""
    a, b = PostgresStore(PG_URL, schema), PostgresStore(PG_URL, schema)
    a.open()
    b.open()
    yield a, b
    a.close()
    b.close()


def raw(sql: str, params: object = None) -> list[tuple[object, ...]]:
    """One statement on a connection of its own (autocommit), its rows."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def test_two_hosts_claiming_at_once_never_claim_the_same_job(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = hosts
    jobs = [NewJob("true", queue="q1" if i % 3 else "q2") for i in range(300)]
    insert(a, *jobs)
    start = threading.Barrier(2)
    got: dict[str, list[Claim]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(store: PostgresStore, name: str) -> None:
        try:
            start.wait(WAIT)
            while True:
                batch = claim(store, limit=7, owner=name)
                if not batch:
                    return
                got[name] += batch
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not errors, errors
    claimed = [c.job.id for c in got["a"] + got["b"]]
    assert len(claimed) == len(set(claimed)) == 300  # each job once, every job
    assert got["a"] and got["b"]
    assert_counts_match(a)
    assert one(b, lambda s: s.count_by_state())[JobState.PROCESSING] == 300


def test_a_host_claims_past_the_rows_another_host_holds(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    """SKIP LOCKED: while one host's claim is uncommitted, the other takes the next jobs
    at once instead of waiting for it (one queue, then several)."""
    a, b = hosts
    insert(a, *[NewJob("true", id=f"j{i}", queue=f"q{i % 2}") for i in range(8)])
    for limit_queues in (1, 2):
        with a.transaction():
            first = a.claim_from_queues(
                "a", {f"q{i}": 10 for i in range(limit_queues)}, 2, T0, DEFAULT_TIMEOUT, MARGIN
            )
            # b runs on its own thread: were it to wait for a's row locks, the join
            # below would time out.
            second: list[Claim] = []

            def claim_b(out: list[Claim] = second) -> None:
                out.extend(claim(b, limit=2, owner="b"))

            t = threading.Thread(target=claim_b)
            t.start()
            t.join(WAIT)
            assert not t.is_alive(), "the second host waited for the first one's claim"
        # The second host may come up short (it chose rows the first one holds) but
        # never takes one of them.
        assert len(first) == 2 and 1 <= len(second) <= 2
        assert not {c.job.id for c in first} & {c.job.id for c in second}


def test_two_hosts_rescuing_at_once_never_take_the_same_node(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = hosts
    for i in range(40):
        row = NodeRow(f"n{i:02}", "h", i, T0, T0, 1, f"/run/{i}.sock")
        one(a, lambda s, row=row: s.register_node(row))
    start = threading.Barrier(2)
    taken: dict[str, list[str]] = {}

    def rescue(store: PostgresStore, name: str) -> None:
        start.wait(WAIT)
        taken[name] = [n.name for n in one(store, lambda s: s.take_dead_nodes(T0 + 1, T0 + 2))]

    threads = [threading.Thread(target=rescue, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(taken["a"] + taken["b"]) == [f"n{i:02}" for i in range(40)]


def test_daemons_starting_at_once_create_the_schema_once(schema: str) -> None:
    stores = [PostgresStore(PG_URL, schema) for _ in range(4)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def open_one(store: PostgresStore) -> None:
        try:
            start.wait(WAIT)
            store.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    try:
        assert not errors, errors
        assert one(stores[0], lambda s: s.schema_version()) == SCHEMA_VERSION
        (job,) = insert(stores[1], NewJob("true"))
        assert job.id == "1"
    finally:
        for store in stores:
            store.close()


def test_a_newer_schema_version_is_refused(schema: str) -> None:
    store = PostgresStore(PG_URL, schema)
    store.open()
    store.close()
    raw(
        f"UPDATE \"{schema}\".meta SET value = %s WHERE key = 'schema_version'",
        (str(SCHEMA_VERSION + 1),),
    )
    again = PostgresStore(PG_URL, schema)
    with pytest.raises(InternalError, match="newer than this queuectld"):
        again.open()
    again.close()


def test_a_lost_connection_is_store_unavailable_and_the_next_transaction_works(
    schema: str,
) -> None:
    store = PostgresStore(PG_URL, schema)
    store.open()
    try:
        insert(store, NewJob("true", id="before"))
        with pytest.raises(StoreUnavailable) as caught, store.transaction():
            pid = store.conn.info.backend_pid
            assert raw("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
            store.get_job("before")
        assert caught.value.code == "store_unavailable"
        assert "queuectld retries" in str(caught.value)
        assert "127.0.0.1:5432/test" in str(caught.value)
        # The pool replaces the dead connection: the next transaction just works.
        insert(store, NewJob("true", id="after"))
        assert {j.id for j in one(store, lambda s: list(s.iter_all()))} == {"before", "after"}
    finally:
        store.close()


def test_describe_has_no_password() -> None:
    store = PostgresStore("postgresql://alice:secret@db.example:6543/queues", "q1")
    assert store.describe() == "postgresql://db.example:6543/queues (schema q1)"


def test_the_wakeup_source_wakes_on_an_enqueue_by_another_host(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = hosts
    source = a.wakeup_source()

    async def scenario() -> None:
        woken = asyncio.Event()
        task = asyncio.create_task(source.run(woken.set))
        try:
            # The first wake-up says LISTEN is in place.
            await asyncio.wait_for(woken.wait(), WAIT)
            woken.clear()
            await asyncio.to_thread(insert, b, NewJob("true", id="from-b"))
            await asyncio.wait_for(woken.wait(), WAIT)
            # A lost listening connection: one warning, a reconnect, a wake-up.
            woken.clear()
            killed = await asyncio.to_thread(
                raw,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"queuectld-wakeups/{a.channel}",),
            )
            assert killed == [(True,)]
            await asyncio.wait_for(woken.wait(), WAIT)
            woken.clear()
            # A queue's settings changed by another host wake it too.
            await asyncio.to_thread(one, b, lambda s: s.set_queue(QueueLimits("q", paused=True)))
            await asyncio.wait_for(woken.wait(), WAIT)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_counts_stay_right_after_folding(hosts: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = hosts
    with a.transaction():  # one delta row per statement: more than FOLD_OVER of them
        for i in range(FOLD_OVER + 50):
            a.insert_jobs([NewJob("true", queue=f"q{i % 3}")], T0)
    (deltas,) = raw(f'SELECT COUNT(*) FROM "{a.schema}".job_count_deltas')[0]
    assert isinstance(deltas, int) and deltas > FOLD_OVER
    by_queue = one(a, lambda s: s.count_by_queue())  # folds
    (after,) = raw(f'SELECT COUNT(*) FROM "{a.schema}".job_count_deltas')[0]
    assert after == 3  # one row per (queue, state)
    assert by_queue == {f"q{i}": {JobState.PENDING: 350} for i in range(3)}
    # Counting goes on from the folded rows, on every host.
    for c in claim(b, limit=40)[:10]:
        finish(b, c, JobState.COMPLETED)
    jobs = one(a, lambda s: list(s.iter_all()))
    actual = Counter((j.queue, j.state) for j in jobs)
    expected: dict[str, dict[JobState, int]] = {}
    for (queue, state), n in actual.items():
        expected.setdefault(queue, {})[state] = n
    assert one(a, lambda s: s.count_by_queue()) == expected
    assert_counts_match(b)


def test_the_claim_reads_the_partial_indexes(schema: str) -> None:
    store = PostgresStore(PG_URL, schema)
    store.open()
    try:
        raw(
            f'INSERT INTO "{schema}".jobs (id, command, state, queue, created_at, updated_at,'
            " run_at) SELECT 'x' || i, 'true', CASE i % 10 WHEN 0 THEN 'pending'"
            " WHEN 1 THEN 'waiting' ELSE 'completed' END, 'q' || (i % 5), 0, 0, i"
            " FROM generate_series(1, 20000) i"
        )
        raw(f'ANALYZE "{schema}".jobs')
        params = {
            "queue": "q0",
            "limit": 5,
            "now": T0,
            "owner": "n",
            "default_timeout": 1.0,
            "lease_margin": 1.0,
        }
        with store.transaction():
            for name, index in (
                ("claim_from_queue", "jobs_ready"),
                ("ready_in_queue", "jobs_ready"),
                ("next_timed_at", "jobs_timed"),
                ("promote_due", "jobs_timed"),
            ):
                plan = "\n".join(
                    str(r["QUERY PLAN"]) for r in store.conn.execute("EXPLAIN " + Q[name], params)
                )
                assert index in plan, plan
                assert "Seq Scan" not in plan, plan
    finally:
        store.close()


def test_an_unreachable_server_is_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", "q")
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/test"):
        store.open()


def test_open_store_opens_postgresql_urls(schema: str) -> None:
    store = open_store(PG_URL, schema)
    try:
        assert isinstance(store, PostgresStore)
        assert store.describe() == f"postgresql://127.0.0.1:5432/test (schema {schema})"
        assert one(store, lambda s: s.schema_version()) == SCHEMA_VERSION
    finally:
        store.close()


def test_hosts_enqueuing_at_once_get_distinct_ids(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    start = threading.Barrier(2)
    made: list[str] = []
    errors: list[BaseException] = []

    def enqueue(store: PostgresStore) -> None:
        try:
            start.wait(WAIT)
            for _ in range(40):
                made.extend(j.id for j in insert(store, NewJob("true"), NewJob("true")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue, args=(s,)) for s in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert not errors, errors
    assert sorted(made, key=int) == [str(i) for i in range(1, 161)]


def test_a_unique_key_taken_by_another_host_meanwhile_returns_its_job(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    """Host b looked for the key before host a committed its job: b's insert fails on
    the unique index once a commits, and b returns a's job instead of an error."""
    a, b = hosts
    got: list[object] = []
    with a.transaction():
        (mine,) = a.insert_jobs([NewJob("true", unique_key="k")], T0)
        t = threading.Thread(
            target=lambda: got.append(insert(b, NewJob("echo b", unique_key="k"))[0])
        )
        t.start()
        # Wait until b is blocked behind a's uncommitted rows (a lock wait).
        deadline = time.monotonic() + WAIT
        while not raw(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (f"queuectld/{b.schema}",),
        ):
            assert time.monotonic() < deadline, "host b never waited for host a"
            time.sleep(0.01)
    t.join(WAIT)
    (theirs,) = got
    assert isinstance(theirs, Job) and theirs.id == mine.id and theirs.command == "true"
    assert [j.id for j in one(b, lambda s: list(s.iter_all()))] == [mine.id]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pg_errors.DiskFull("could not extend file"), StorageFull),
        (pg_errors.DeadlockDetected("deadlock detected"), StoreUnavailable),
        (pg_errors.SerializationFailure("could not serialize"), StoreUnavailable),
        (pg_errors.AdminShutdown("terminating connection"), StoreUnavailable),
        (pg_errors.TooManyConnections("too many clients"), StoreUnavailable),
        (psycopg_pool.PoolTimeout("couldn't get a connection"), StoreUnavailable),
        (pg_errors.UndefinedTable("no such table"), InternalError),
    ],
)
def test_driver_errors_map_to_stable_codes(error: Exception, expected: type) -> None:
    """The daemon retries what is unavailable; a full disk and a bug say so instead."""
    mapped = PostgresStore(PG_URL, "q")._wrap(error)
    assert type(mapped) is expected


def _at_once(
    hosts: tuple[PostgresStore, PostgresStore], fn: Callable[[PostgresStore], T]
) -> list[T]:
    """``fn`` on both hosts at the same moment (threads behind a barrier); both results."""
    start = threading.Barrier(2)
    out: list[T] = []
    errors: list[BaseException] = []

    def run(store: PostgresStore) -> None:
        try:
            start.wait(WAIT)
            out.append(fn(store))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert not errors, errors
    return out


def test_hosts_claiming_at_once_keep_a_queue_concurrency_limit(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, _ = hosts
    one(a, lambda s: s.set_queue(QueueLimits("slow", concurrency=2)))
    insert(a, *[NewJob("true", queue="slow") for _ in range(40)])
    for _ in range(10):
        got = _at_once(hosts, lambda s: claim(s, limit=5, owner=f"h{id(s)}"))
        running = one(a, lambda s: s.count_by_state())[JobState.PROCESSING]
        assert running <= 2, f"{running} jobs of a queue limited to 2 run at once"
        assert sum(len(batch) for batch in got) == running
        for store, batch in zip(hosts, got, strict=False):
            for c in batch:
                finish(store, c, JobState.COMPLETED)
    assert one(a, lambda s: s.count_by_state())[JobState.COMPLETED] >= 10


def test_hosts_claiming_at_once_spend_each_token_once(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, _ = hosts
    # 4 an hour: a full bucket of 4 tokens, and no new one during the test.
    one(a, lambda s: s.set_queue(QueueLimits("api", rate_count=4, rate_period=3600.0)))
    insert(a, *[NewJob("true", queue="api") for _ in range(20)])
    got = _at_once(hosts, lambda s: claim(s, limit=10, owner=f"h{id(s)}"))
    got += _at_once(hosts, lambda s: claim(s, limit=10, owner=f"h{id(s)}"))
    assert sum(len(batch) for batch in got) == 4


def test_a_schedule_tick_makes_one_job_for_the_whole_cluster(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, _ = hosts
    now = time.time()
    row = ScheduleRow(
        name="every-minute",
        cron="* * * * *",
        tz="UTC",
        job='{"command": "true"}',
        overlap="queue",
        catch_up="latest",
        paused=False,
        owner_uid=None,
        created_at=now - 120,
        next_at=next_tick("* * * * *", "UTC", now - 60),  # one tick is due
    )
    one(a, lambda s: s.put_schedule(row, False))
    fired = _at_once(hosts, lambda s: one(s, lambda t: fire_due(t, now, now - 120)))
    made = [job.id for f in fired for job in f.jobs]
    assert len(made) == 1, made
    assert one(a, lambda s: s.count_jobs(JobFilter())) == 1
    assert all(one(s, lambda t: t.get_schedule("every-minute")).next_at > now for s in hosts)
