"""The PostgreSQL server the tests use, and a fresh schema per test.

Tests that need PostgreSQL fail (never skip) when it cannot be reached: CI must not
pass by leaving a backend out. ``QUEUECTL_TEST_PG_URL`` points them at another server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

PG_URL = os.environ.get("QUEUECTL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def require_pg(url: str = PG_URL) -> None:
    """Fail the test, with what to do, when PostgreSQL does not answer at ``url``."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {url} ({exc}); start it "
            "(.ci/run does: pg_ctlcluster --skip-systemctl-redirect VERSION main start) "
            "or set QUEUECTL_TEST_PG_URL",
            pytrace=False,
        )


@contextmanager
def pg_schema(url: str = PG_URL) -> Iterator[str]:
    """A schema name no other test uses (the store creates it), dropped afterwards."""
    require_pg(url)
    name = f"qt_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
