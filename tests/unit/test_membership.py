"""When a node name is taken by another live daemon (queuectld/membership.py)."""

from __future__ import annotations

import os
import subprocess

from queuectld.membership import NodeIdentity, name_taken
from queuectld.store.base import NodeRow

NOW = 1_000_000.0
TIMEOUT = 15.0
ME = NodeIdentity("a", "host-a", os.getpid(), NOW, "/run/a.sock")


def row(**changes: object) -> NodeRow:
    fields: dict[str, object] = dict(
        name="a",
        host="host-b",
        pid=4242,
        started_at=NOW - 100,
        heartbeat_at=NOW - 1,
        slots=4,
        socket="/run/b.sock",
    )
    fields.update(changes)
    return NodeRow(**fields)  # type: ignore[arg-type]


def test_a_new_name_is_free() -> None:
    assert not name_taken(None, ME, NOW, TIMEOUT)


def test_a_live_daemon_on_another_host_holds_the_name() -> None:
    assert name_taken(row(), ME, NOW, TIMEOUT)


def test_a_quiet_stopped_or_rescued_node_gives_the_name_up() -> None:
    assert not name_taken(row(heartbeat_at=NOW - TIMEOUT), ME, NOW, TIMEOUT)
    assert not name_taken(row(stopped_at=NOW - 5), ME, NOW, TIMEOUT)
    assert not name_taken(row(rescued_at=NOW - 5), ME, NOW, TIMEOUT)


def test_on_the_same_host_only_a_running_process_holds_the_name() -> None:
    # A crashed earlier run of this daemon left its row behind with a fresh heartbeat.
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not name_taken(row(host="host-a", pid=gone.pid), ME, NOW, TIMEOUT)
    alive = subprocess.Popen(["sleep", "30"])
    try:
        assert name_taken(row(host="host-a", pid=alive.pid), ME, NOW, TIMEOUT)
    finally:
        alive.kill()
        alive.wait()
    assert not name_taken(row(host="host-a", pid=ME.pid), ME, NOW, TIMEOUT)
