"""The store contract suite runs once per backend; a real database in every test.

``BACKENDS`` lists the store implementations the ``store`` fixture is parametrized
over: SQLite (a file in the test's tmp dir) and PostgreSQL (a fresh schema on the
server of ``tests/pg.py``, dropped after the test; the tests fail when it is not
running). :meth:`Backend.open` connects another store to the same database, as a
restart or a second host would. Backend-specific checks (query plans and the like) go
in their own modules: ``test_sqlite.py``, ``test_postgres.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from queuectld.store.base import Store
from queuectld.store.sqlite import SQLiteStore
from tests.pg import PG_URL, pg_schema

BACKENDS = ["sqlite", "postgres"]


class Backend:
    """One empty database of one kind; :meth:`open` connects a store to it (again)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self._open: list[Store] = []
        self._cleanup = ExitStack()
        self.schema = ""
        if kind == "postgres":
            # A fresh schema per test (dropped at the end); every open() joins it.
            self.schema = self._cleanup.enter_context(pg_schema())

    def open(self) -> Store:
        if self.kind == "sqlite":
            store: Store = SQLiteStore(self.tmp_path / "queue.db")
        elif self.kind == "postgres":
            from queuectld.store.postgres import PostgresStore

            store = PostgresStore(PG_URL, self.schema)
        else:  # pragma: no cover - a backend named in BACKENDS but not built here
            raise NotImplementedError(self.kind)
        store.open()
        self._open.append(store)
        return store

    def close_all(self) -> None:
        for store in self._open:
            store.close()
        self._open.clear()

    def drop(self) -> None:
        """Remove the database (the PostgreSQL schema) after the test."""
        self.close_all()
        self._cleanup.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.drop()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()
