"""Choosing the store: ``[store] url`` / ``--store-url`` / ``QUEUECTLD_STORE_URL``.

The rest of the suite runs on both stores through ``daemon_backend``; these are about
the choice itself: PostgreSQL out of reach at start, a password that must not show,
two daemons (homes) on one PostgreSQL schema, a second daemon on the same home.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import DaemonFactory
from tests.harness import clean_env, temporary_home

# Nothing listens on port 1: connecting fails at once.
UNREACHABLE = "postgresql://queue:s3cret@127.0.0.1:1/test"


def test_unreachable_postgresql_at_start_is_one_line_and_exit_1() -> None:
    with temporary_home() as home:
        proc = subprocess.run(
            [sys.executable, "-m", "queuectld", "--home", str(home), "--log-format", "console"],
            env=clean_env({"QUEUECTLD_STORE_URL": UNREACHABLE}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc
        assert "Traceback" not in proc.stderr
        assert "s3cret" not in proc.stderr, proc.stderr
        wanted = (
            "cannot reach the PostgreSQL store at postgresql://queue:***@127.0.0.1:1/test "
            "(schema queuectl); start it or fix [store] url"
        )
        lines = [line for line in proc.stderr.splitlines() if "cannot reach" in line]
        assert len(lines) == 1 and wanted in lines[0], proc.stderr
        # Not quietly on SQLite instead.
        assert not (home / "queue.db").exists()


def test_print_config_hides_the_password() -> None:
    with temporary_home() as home:
        proc = subprocess.run(
            [sys.executable, "-m", "queuectld", "--home", str(home), "--print-config"],
            env=clean_env({"QUEUECTLD_STORE_URL": UNREACHABLE, "QUEUECTLD_CGROUP": "off"}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc
        assert "s3cret" not in proc.stdout
        assert 'store_url = "postgresql://queue:***@127.0.0.1:1/test"' in proc.stdout


@pytest.mark.postgres_only(reason="two daemons sharing one store is what PostgreSQL is for")
def test_two_homes_share_one_postgresql_schema(daemon_factory: DaemonFactory) -> None:
    a = daemon_factory()
    b = daemon_factory(store_url=a.settings["store_url"], store_schema=a.settings["store_schema"])
    assert a.settings["node_id"] != b.settings["node_id"]
    a.cli("enqueue", "--id", "shared", "--", "true")
    assert b.job("shared")["state"] == "pending"
    b.cli("worker", "start", "--count", "1")
    a.wait_for_state("shared", "completed")
    ready = [e for e in b.log_events() if e.get("event") == "daemon_ready"]
    assert ready and ready[-1]["database"].endswith(f"(schema {a.settings['store_schema']})")


@pytest.mark.postgres_only(reason="SQLite's lock is the database file's, tested elsewhere")
def test_a_second_daemon_on_the_same_home_is_refused(daemon_factory: DaemonFactory) -> None:
    a = daemon_factory()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "queuectld",
            "--home",
            str(a.home),
            "--socket",
            str(a.home / "b.sock"),
        ],
        env=a.daemon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"another queuectld is using the home {a.home}; stop it first" in proc.stderr
