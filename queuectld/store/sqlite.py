"""The SQLite store: WAL journal, ``synchronous=FULL``, one connection on the store thread."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from queuectl.errors import InternalError, QueuectlError, StorageFull
from queuectld.store.common import RowConflict, SQLStore, load_queries

SCHEMA_VERSION = 5


_SQL = resources.files("queuectld.store") / "sql"
Q = load_queries((_SQL / "queries.sql").read_text())
SCHEMA = (_SQL / "schema.sql").read_text()
# Scripts that bring a database of version N-1 to N (before SCHEMA adds what is new).
MIGRATIONS = {v: (_SQL / f"migrate_{v}.sql").read_text() for v in (2, 3, 4, 5)}


def _wrap(exc: sqlite3.Error) -> QueuectlError:
    """Turn a driver error into one of ours; a full disk gets its own code."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return StorageFull("the disk holding the queue database is full; free space and retry")
    if isinstance(exc, sqlite3.OperationalError) and "disk I/O error" in str(exc):
        return StorageFull("the queue database could not be written (I/O error); check the disk")
    return InternalError(f"store error: {exc}")


class SQLiteStore(SQLStore):
    """Queue state in one SQLite file. Not thread-safe: the daemon uses it from one thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._savepoints = 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise InternalError("the store is not open")
        return self._db

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (group commit).
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            # First: it takes effect only in a new, empty database (an old one converts at
            # `vacuum`). Pages freed by purges can then be given back (release_space).
            db.execute(Q["set_auto_vacuum_incremental"])
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so an acknowledged enqueue survives
            # power loss. Group commit keeps this cheap.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            self._db = db
            self._migrate()
        except sqlite3.Error as exc:
            raise _wrap(exc) from exc

    def _migrate(self) -> None:
        db = self.db
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        version = 0
        if has_meta:
            row = db.execute(Q["get_meta"], {"key": "schema_version"}).fetchone()
            version = int(row["value"]) if row else 0
        if version > SCHEMA_VERSION:
            raise InternalError(
                f"{self.path} has schema version {version}, newer than this queuectld "
                f"({SCHEMA_VERSION}); upgrade queuectld"
            )
        if version < SCHEMA_VERSION:
            # A migration rebuilds tables that others reference: foreign keys are checked
            # again once it is done (the pragma cannot change inside a transaction).
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("BEGIN IMMEDIATE")
            try:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    if version > 0 and step in MIGRATIONS:
                        for statement in _statements(MIGRATIONS[step]):
                            db.execute(statement)
                for statement in _statements(SCHEMA):
                    db.execute(statement)
                if version > 0:
                    db.execute(Q["clear_counts"])
                    db.execute(Q["recount_jobs"])
                if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise InternalError(f"{self.path}: migration left broken references")
                db.execute(Q["set_meta"], {"key": "schema_version", "value": str(SCHEMA_VERSION)})
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a checkpoint is an optimisation; the WAL is replayed on next open
            self._db.close()
            self._db = None

    def schema_version(self) -> int:
        row = self.db.execute(Q["get_meta"], {"key": "schema_version"}).fetchone()
        return int(row["value"]) if row else 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _wrap(exc) from exc
        try:
            yield
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise _wrap(exc) from exc

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self.db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.db.execute(f"ROLLBACK TO {name}")
            self.db.execute(f"RELEASE {name}")
            raise
        else:
            self.db.execute(f"RELEASE {name}")
        finally:
            self._savepoints -= 1

    def _run(self, name: str, params: dict[str, Any] | None = None) -> sqlite3.Cursor:
        try:
            return self.db.execute(Q[name], params or {})
        except sqlite3.Error as exc:
            raise _wrap(exc) from exc

    def _run_many(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        """One named statement over many parameter sets (nothing to do for none)."""
        if not rows:
            return
        try:
            self.db.executemany(Q[name], rows)
        except sqlite3.Error as exc:
            raise _wrap(exc) from exc

    def _run_checked(self, name: str, rows: Sequence[dict[str, Any]]) -> list[Any]:
        try:
            with self.savepoint():
                if len(rows) == 1:
                    return self.db.execute(Q[name], rows[0]).fetchall()
                self.db.executemany(Q[name], rows)
                return []
        except sqlite3.IntegrityError:
            raise RowConflict(name) from None
        except sqlite3.Error as exc:
            raise _wrap(exc) from exc

    def release_space(self) -> None:
        if self._run("auto_vacuum").fetchone()[0] != 2:  # not INCREMENTAL: `vacuum` only
            return
        # Python's sqlite3 steps this pragma once per execute: one page each time.
        for _ in range(int(self._run("freelist_count").fetchone()[0])):
            self._run("incremental_vacuum")

    def size_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def compact(self) -> None:
        if self.db.in_transaction:
            raise InternalError("compact runs outside a transaction")
        # An old database converts to incremental auto-vacuum at this VACUUM.
        self._run("set_auto_vacuum_incremental")
        self._run("vacuum")

    def describe(self) -> str:
        return str(self.path)


def _statements(script: str) -> Iterator[str]:
    """Split a schema script into complete statements (triggers contain semicolons)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()
