"""The private PostgreSQL server of the fault tests does what they rely on."""

from __future__ import annotations

import psycopg
import pytest

from tests.harness import wait_for
from tests.pgserver import ADMIN_APP, PrivatePostgres


def _connect(pg: PrivatePostgres, app: str = "someone") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(pg.url, autocommit=True, application_name=app, connect_timeout=5)


def _alive(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def test_private_server_is_not_the_shared_one(fault_pg: PrivatePostgres) -> None:
    assert fault_pg.port != 5432
    with fault_pg.connect() as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        assert row is not None and int(str(row[0])) == fault_pg.max_connections
        row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None and str(row[0]) == str(fault_pg.data_dir)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_committed_data_and_breaks_old_connections(
    fault_pg: PrivatePostgres, mode: str
) -> None:
    with fault_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS restart_probe")
        conn.execute("CREATE TABLE restart_probe (n int)")
        conn.execute("INSERT INTO restart_probe VALUES (42)")
    old = _connect(fault_pg)
    url = fault_pg.url
    fault_pg.restart(mode)
    assert fault_pg.url == url  # same port: clients reconnect to the same place
    assert not _alive(old)
    old.close()
    with fault_pg.connect() as conn:
        assert conn.execute("SELECT n FROM restart_probe").fetchall() == [(42,)]
        conn.execute("DROP TABLE restart_probe")


def test_down_refuses_connections_until_it_is_started_again(fault_pg: PrivatePostgres) -> None:
    with fault_pg.down():
        assert not fault_pg.running()
        with pytest.raises(psycopg.OperationalError):
            _connect(fault_pg).close()
    assert fault_pg.running()


def test_terminate_backends_by_application_name(fault_pg: PrivatePostgres) -> None:
    a = _connect(fault_pg, "victim")
    b = _connect(fault_pg, "bystander")
    try:
        assert fault_pg.terminate_backends("victim") == 1
        assert not _alive(a)
        assert _alive(b)
        # None: every client but the server class's own connections.
        assert fault_pg.terminate_backends() >= 1
        assert not _alive(b)
        assert fault_pg.backends() == []
    finally:
        a.close()
        b.close()


def test_fill_connections_refuses_new_ones_then_frees_them(fault_pg: PrivatePostgres) -> None:
    with fault_pg.fill_connections() as held:
        assert len(held) >= 1
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            _connect(fault_pg).close()
    with _connect(fault_pg) as conn:
        assert _alive(conn)


def test_fill_connections_with_evict_takes_the_slots_of_existing_clients(
    fault_pg: PrivatePostgres,
) -> None:
    outsider = _connect(fault_pg, "outsider")
    try:
        with fault_pg.fill_connections(evict=True) as held:
            assert not _alive(outsider)
            assert len(held) == fault_pg.max_connections
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                _connect(fault_pg).close()
    finally:
        outsider.close()
    assert fault_pg.running()

    def admins() -> int:
        with fault_pg.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (ADMIN_APP,)
            ).fetchone()
            assert row is not None
            return int(str(row[0]))

    # Backends end a moment after their clients close: only the asking one stays.
    wait_for(lambda: admins() == 1, timeout=10, what="the held connections to end")
