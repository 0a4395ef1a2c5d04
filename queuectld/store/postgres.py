"""The PostgreSQL store: several queuectld hosts share one database.

Every Store method is :class:`~queuectld.store.common.SQLStore`'s, over the named queries
of ``sql/postgres/queries.sql``; this module holds the connections (a small pool, one
connection per transaction), the schema, the error mapping and the wake-ups
(LISTEN/NOTIFY). What makes sharing safe is in the SQL: claims take rows with
``FOR UPDATE SKIP LOCKED``, counts are appended deltas (no hot row), and rescues and
id numbers are taken under row locks.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import DictRow, dict_row

from queuectl.errors import (
    InternalError,
    InvalidRequest,
    QueuectlError,
    StorageFull,
    StoreUnavailable,
)
from queuectl.protocol import JobState
from queuectld.store.base import WakeupSource
from queuectld.store.common import Cursor, RowConflict, SQLStore, load_queries

log = structlog.get_logger("queuectld.store")

SCHEMA_VERSION = 1  # PostgreSQL's own numbering (SQLite's is separate)
FOLD_OVER = 1000  # delta rows beyond which count_by_queue folds them
POOL_MIN, POOL_MAX = 1, 4
# Seconds to wait for a connection before StoreUnavailable: while the server is down
# every store call waits this long once per retry, and the requests queued behind it too.
POOL_TIMEOUT = 2.0
CONNECT_TIMEOUT = 5

_SQL = resources.files("queuectld.store") / "sql" / "postgres"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# :name parameters (not the :: of a cast) become psycopg's %(name)s.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def to_psycopg(query: str) -> str:
    """A query written with ``:name`` parameters, in psycopg's ``%(name)s`` style."""
    return _PARAM.sub(r"%(\1)s", query.replace("%", "%%"))


Q = {
    name: to_psycopg(text)
    for name, text in load_queries((_SQL / "queries.sql").read_text()).items()
}
SCHEMA = [
    s.strip()
    for s in re.split(r"^-- ;$", (_SQL / "schema.sql").read_text(), flags=re.MULTILINE)
    if s.strip()
]
# The tables of a store (compact vacuums them).
TABLES = (
    "meta",
    "settings",
    "jobs",
    "job_deps",
    "schedules",
    "attempts",
    "queues",
    "nodes",
    "job_count_deltas",
)

# The tables that claims, ends and purges churn (sweep_dead_rows vacuums them) and
# when: more dead rows in jobs than this many, and than this share of its live rows.
SWEPT_TABLES = ("jobs", "attempts", "job_deps", "job_count_deltas")
DEAD_ROWS_MIN = 10_000
DEAD_ROWS_SHARE = 0.2

# The server or the connection went away, or is too busy: the daemon retries.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    pg_errors.AdminShutdown,
    pg_errors.CrashShutdown,
    pg_errors.CannotConnectNow,
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.LockNotAvailable,
    pg_errors.TooManyConnections,
    pg_errors.OutOfMemory,
)
# Only the disk: the rest of class 53 (out of memory, too many connections) passes.
_FULL: tuple[type[BaseException], ...] = (pg_errors.DiskFull,)


class PostgresStore(SQLStore):
    """Queue state in one schema of a PostgreSQL database, shared by every host using it.

    Like every store, one instance is used from one thread; other hosts (other
    instances) may use the same schema at the same time.
    """

    def __init__(self, url: str, schema: str = "queuectl") -> None:
        if not _SCHEMA_NAME.match(schema):
            raise InvalidRequest(
                f"{schema!r} is not a usable PostgreSQL schema name; use letters, digits "
                "and underscores, not starting with a digit"
            )
        self.url = url
        self.schema = schema
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[DictRow]] | None = None
        self._conn: psycopg.Connection[DictRow] | None = None
        self._savepoints = 0

    # -- connections ------------------------------------------------------------

    def describe(self) -> str:
        """``postgresql://host:port/db (schema S)``: no user, no password."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            return f"a PostgreSQL database (schema {self.schema})"
        host = str(info.get("host") or "localhost")
        port = str(info.get("port") or "5432")
        db = str(info.get("dbname") or info.get("user") or "postgres")
        return f"postgresql://{host}:{port}/{db} (schema {self.schema})"

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema (see schema.sql)."""
        return f"queuectl_{self.schema}"

    def _wrap(self, exc: BaseException) -> QueuectlError:
        """Turn a driver or pool error into one of ours (see the module docstring)."""
        where = self.describe()
        if isinstance(exc, _FULL):
            return StorageFull(
                f"the PostgreSQL store at {where} is out of space ({exc}); free space "
                "on the server and retry"
            )
        if isinstance(exc, _UNAVAILABLE):
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return StoreUnavailable(
                f"the PostgreSQL store at {where} is unavailable ({reason}); queuectld retries"
            )
        return InternalError(f"store error ({where}): {exc}")

    def _configure(self, conn: psycopg.Connection[DictRow]) -> None:
        """Every new connection: this store's schema, and commits that wait for the WAL
        flush (an acknowledged enqueue survives a server crash)."""
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        conn.execute("SET synchronous_commit = on")
        conn.commit()

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[DictRow]]:
        if self._pool is None:
            raise InternalError("the store is not open")
        return self._pool

    @property
    def conn(self) -> psycopg.Connection[DictRow]:
        """The connection of the transaction in progress."""
        if self._conn is None:
            raise InternalError("store calls must run inside store.transaction()")
        return self._conn

    def open(self) -> None:
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[DictRow]] = (
            psycopg_pool.ConnectionPool(
                self.url,
                min_size=POOL_MIN,
                max_size=POOL_MAX,
                timeout=POOL_TIMEOUT,
                open=False,
                configure=self._configure,
                # A connection the server dropped while it sat in the pool is replaced
                # at checkout, not handed to the next transaction.
                check=psycopg_pool.ConnectionPool.check_connection,
                connection_class=psycopg.Connection[DictRow],
                kwargs={
                    "row_factory": dict_row,
                    "connect_timeout": CONNECT_TIMEOUT,
                    "application_name": f"queuectld/{self.schema}",
                },
                name=f"queuectl-{self.schema}",
            )
        )
        try:
            pool.open(wait=True, timeout=POOL_TIMEOUT)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close()
            raise self._wrap(exc) from exc
        self._pool = pool
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        """Create the schema (once, whoever starts first) or check its version."""
        with self.transaction():
            self._run("lock_schema", {"schema": self.schema})
            present = self._run("schema_exists", {"schema": self.schema}).fetchone()
            version = self.schema_version() if present and present["present"] else 0
            if version > SCHEMA_VERSION:
                raise InternalError(
                    f"{self.describe()} has schema version {version}, newer than this "
                    f"queuectld ({SCHEMA_VERSION}); upgrade queuectld"
                )
            if version == SCHEMA_VERSION:
                return
            try:
                self.conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
                for statement in SCHEMA:  # no parameters: sent as written
                    self.conn.execute(statement)
            except psycopg.Error as exc:
                raise self._wrap(exc) from exc
            self._run("set_meta", {"key": "schema_version", "value": str(SCHEMA_VERSION)})
            if self._run("next_job_number").fetchone() is None:
                # The row the id generator locks must exist before the first enqueue.
                self._run("set_meta", {"key": "next_job_number", "value": "1"})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def schema_version(self) -> int:
        row = self._run("get_meta", {"key": "schema_version"}).fetchone()
        return int(row["value"]) if row else 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._conn is not None:
            raise InternalError("store transactions do not nest; use savepoint()")
        try:
            conn = self.pool.getconn()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._wrap(exc) from exc
        self._conn = conn
        try:
            yield
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except psycopg.Error:
                pass  # the connection is gone: the server rolled back; the pool drops it
            if isinstance(exc, psycopg.Error):
                raise self._wrap(exc) from exc
            raise
        finally:
            self._conn = None
            self._savepoints = 0
            self.pool.putconn(conn)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = sql.Identifier(f"sp{self._savepoints}")
        self._execute(sql.SQL("SAVEPOINT {}").format(name))
        try:
            yield
        except BaseException:
            self._execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(name))
            self._execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
            raise
        else:
            self._execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
        finally:
            self._savepoints -= 1

    def _execute(self, statement: sql.Composed) -> None:
        try:
            self.conn.execute(statement)
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc

    def _run(self, name: str, params: dict[str, Any] | None = None) -> Cursor:
        try:
            return self.conn.execute(Q[name], params or {})
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc

    def _run_many(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            with self.conn.cursor() as cur:
                cur.executemany(Q[name], rows)
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc

    def _run_checked(self, name: str, rows: Sequence[dict[str, Any]]) -> list[Any]:
        if not rows:
            return []
        try:
            with self.savepoint(), self.conn.cursor() as cur:
                if len(rows) == 1:
                    cur.execute(Q[name], rows[0])
                    return cur.fetchall() if cur.description is not None else []
                if f"{name}_batch" in Q:
                    # One statement, not executemany: a refused row must not abort a
                    # pipeline half-way (psycopg then logs about it).
                    batch = [{**row, "pos": i} for i, row in enumerate(rows)]
                    cur.execute(Q[f"{name}_batch"], {"rows": json.dumps(batch)})
                    return []
                cur.executemany(Q[name], rows)
                return []
        except pg_errors.UniqueViolation:
            raise RowConflict(name) from None
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc

    # -- what differs from SQLite -------------------------------------------------

    def _claim_rows(self, allowed: dict[str, int], limit: int, params: dict[str, Any]) -> list[Any]:
        """Several queues: how many of each the claim order picks, then each queue's
        share claimed off jobs_ready with SKIP LOCKED. Locking the candidates while
        choosing would keep the ones not chosen from the other hosts until commit;
        claiming chosen seqs instead could find them taken by another host and come
        back short while other jobs are ready."""
        if len(allowed) == 1:
            return super()._claim_rows(allowed, limit, params)
        shares = collections.Counter(queue for queue, _ in self._ready(allowed, limit))
        claimed: list[Any] = []
        for queue, n in shares.items():
            rows = self._run("claim_from_queue", {**params, "queue": queue, "limit": n})
            claimed += rows.fetchall()
        return claimed

    def count_by_queue(self, owner_uid: int | None = None) -> dict[str, dict[JobState, int]]:
        if owner_uid is None:
            self._fold_counts()
        return super().count_by_queue(owner_uid)

    def _fold_counts(self) -> None:
        """Replace the count deltas by their sums once there are many (one host at a
        time; the others go on appending and reading meanwhile)."""
        over = self._run("count_deltas_over", {"limit": FOLD_OVER}).fetchone()
        if over is None or not over["over"]:
            return
        locked = self._run("try_fold_lock").fetchone()
        if locked is not None and locked["locked"]:
            self._run("fold_counts")

    def release_space(self) -> None:
        """Nothing: PostgreSQL's autovacuum reuses the space of deleted rows."""

    def compact(self) -> None:
        if self._conn is not None:
            raise InternalError("compact runs outside a transaction")
        try:
            conn = self.pool.getconn()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._wrap(exc) from exc
        try:
            conn.autocommit = True  # VACUUM cannot run inside a transaction
            for table in TABLES:
                conn.execute(
                    sql.SQL("VACUUM (FULL, ANALYZE) {}").format(sql.Identifier(self.schema, table))
                )
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc
        finally:
            try:
                conn.autocommit = False
            except psycopg.Error:
                pass  # a broken connection: the pool discards it
            self.pool.putconn(conn)

    def sweep_dead_rows(self) -> bool:
        # Claims, ends and purges leave dead row versions (and dead entries in the claim's
        # partial index) that only VACUUM removes. Autovacuum does it where it is on (the
        # schema sets its thresholds low); where it is off or falls behind, claims would
        # step over more and more dead entries, so the daemon does it itself.
        try:
            conn = self.pool.getconn()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._wrap(exc) from exc
        try:
            conn.autocommit = True  # VACUUM cannot run inside a transaction
            row = conn.execute(Q["dead_rows"]).fetchone()
            if row is None or row["dead"] <= max(DEAD_ROWS_MIN, row["live"] * DEAD_ROWS_SHARE):
                return False
            for table in SWEPT_TABLES:
                conn.execute(
                    sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(self.schema, table))
                )
            return True
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc
        finally:
            try:
                conn.autocommit = False
            except psycopg.Error:
                pass  # a broken connection: the pool discards it
            self.pool.putconn(conn)

    def wakeup_source(self) -> WakeupSource:
        return PgWakeups(self.url, self.channel, self.describe())


class PgWakeups:
    """LISTEN on the store's channel; every notification wakes the daemon."""

    FIRST_DELAY = 0.2
    MAX_DELAY = 5.0

    def __init__(self, url: str, channel: str, where: str) -> None:
        self.url = url
        self.channel = channel
        self.where = where

    async def run(self, wake: Callable[[], None]) -> None:
        """Listen until cancelled. ``wake`` is also called each time LISTEN is in place
        (the first connect, every reconnect): events may have been missed before."""
        delay = self.FIRST_DELAY
        lost = False  # one warning per loss, not one per failed retry
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    application_name=f"queuectld-wakeups/{self.channel}",
                )
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    if lost:
                        log.info("store_wakeups_back", store=self.where)
                    lost, delay = False, self.FIRST_DELAY
                    wake()
                    async for _ in conn.notifies():
                        wake()
            except psycopg.Error as exc:
                if not lost:
                    text = str(exc).strip()
                    log.warning(
                        "store_wakeups_lost",
                        store=self.where,
                        error=text.splitlines()[0] if text else type(exc).__name__,
                        retry_in=delay,
                    )
                    lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.MAX_DELAY)
