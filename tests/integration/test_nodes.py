"""Cluster membership through the real daemon: `queuectl nodes`, the status rows,
one name per daemon, and logs read through the daemon that ran the job."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DaemonFactory
from tests.harness import queuectl_command, wait_for
from tests.pg import PG_URL, pg_schema

FAST = {"node_timeout": 3}


@pytest.fixture
def shared_store() -> Iterator[dict[str, Any]]:
    """Settings of daemons sharing one fresh schema (set up before, and so dropped
    after, the daemons of ``daemon_factory``)."""
    with pg_schema() as schema:
        yield {"store_url": PG_URL, "store_schema": schema, **FAST}


def test_nodes_lists_this_daemon_with_its_slots(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(**FAST)
    d.cli("worker", "start", "--count", "3")

    def three_slots() -> list[dict[str, object]] | None:
        rows: list[dict[str, object]] = d.cli_json("nodes", "--json")
        return rows if rows and rows[0]["slots"] == 3 else None

    (me,) = wait_for(three_slots, timeout=15, what="the heartbeat to carry 3 slots")
    assert me["state"] == "live" and me["this"] is True
    assert me["pid"] == d.pid
    status = d.cli_json("status", "--json")
    assert [n["name"] for n in status["nodes"]] == [me["name"]]
    text = d.cli("nodes")
    assert "live" in text and f"* {me['name']}" in text


@pytest.mark.postgres_only(reason="daemons share one store only on PostgreSQL")
def test_a_second_daemon_under_a_live_name_is_refused(
    shared_store: dict[str, Any], daemon_factory: DaemonFactory
) -> None:
    first = daemon_factory(node_id="same", **shared_store)
    second = daemon_factory(start=False, node_id="same", **shared_store)
    with pytest.raises(RuntimeError):
        second.start()
    assert "give each daemon its own node_id" in second.stderr_text()
    assert first.running()


@pytest.mark.postgres_only(reason="daemons share one store only on PostgreSQL")
def test_logs_are_read_through_the_daemon_that_ran_the_job(
    shared_store: dict[str, Any], daemon_factory: DaemonFactory
) -> None:
    front = daemon_factory(workers=0, node_id="front", **shared_store)
    back = daemon_factory(workers=1, node_id="back", **shared_store)
    front.cli("enqueue", "--id", "remote", "--", "echo ran-on-back")
    front.wait_for_state("remote", "completed")
    assert not (front.home / "logs" / "job_remote.txt").exists()
    assert "ran-on-back" in front.cli("logs", "remote")
    status = front.cli("status")
    assert "front" in status and "back" in status  # one row per host

    back.stop()  # its socket is gone: say where the log is instead
    out = front.run("logs", "remote")
    assert out.returncode == 1
    assert "daemon back" in out.stderr and "keeps its log" in out.stderr


@pytest.mark.postgres_only(reason="daemons share one store only on PostgreSQL")
def test_wait_and_follow_jobs_that_another_daemon_runs(
    shared_store: dict[str, Any], daemon_factory: DaemonFactory
) -> None:
    front = daemon_factory(workers=0, node_id="front", **shared_store)
    daemon_factory(workers=1, node_id="back", **shared_store)
    # The job waits for a file, so `logs -f` surely joins while it runs on `back`.
    gate = front.home / "gate"
    front.cli(
        "enqueue",
        "--id",
        "far",
        "--",
        f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after",
    )
    front.wait_for_state("far", "processing")
    follow = subprocess.Popen(
        [*queuectl_command(), "logs", "-f", "far"],
        env=front.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        gate.touch()
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert "after" in out  # streamed by `back`, through its socket
    # `wait` on `front` learns of an end that only `back` saw.
    front.cli("enqueue", "--id", "far2", "--", "true")
    done = front.run("wait", "far2", "--timeout", "20s")
    assert done.returncode == 0, done.stderr
