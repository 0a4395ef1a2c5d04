"""Faults of the database itself under a 2,000-job drain by two daemons (issue 12):
a PostgreSQL restart, killed backend connections, every connection slot taken.

Each runs on the private server (tests/pgserver.py), never the shared one. Every job
must end completed exactly once in the bookkeeping, with an extra run only where an
interruption is recorded; the daemons stay up, and while they cannot reach the store
they answer clients with a "store unavailable" error.
"""

from __future__ import annotations

import re
import time

import pytest

from queuectl.errors import StoreUnavailable
from tests.cluster.clusterlib import Cluster, assert_bookkeeping
from tests.cluster.conftest import ClusterFactory
from tests.harness import QueueDaemon, wait_for
from tests.pgserver import PrivatePostgres

JOBS = 2000
DAEMONS = 2
# How long the outages last: several of the daemons' retries (their backoff starts at a
# fraction of a second), and jobs finishing meanwhile whose outcomes must wait.
OUTAGE_S = 4.0
# Shorter than the outages: a database outage must not pass for the death of a host.
NODE_TIMEOUT = 3.0
UNAVAILABLE = re.compile(r"store\b.*\bunavailable", re.IGNORECASE)


def start_drain(cluster_factory: ClusterFactory, pg: PrivatePostgres) -> tuple[Cluster, list[str]]:
    """Two daemons on the private server, 2,000 jobs enqueued, a quarter of them done."""
    cluster = cluster_factory(url=pg.url, node_timeout=NODE_TIMEOUT)
    cluster.start(DAEMONS)
    ids = cluster.enqueue_spread(JOBS)
    cluster.wait_completed(JOBS // 4, timeout=60)
    return cluster, ids


def outage_lines(daemon: QueueDaemon) -> int:
    """How many times the daemon logged that its store went away."""
    return sum(1 for e in daemon.log_events() if e.get("event") == "store_unavailable")


def unavailable_throughout(cluster: Cluster, began: float) -> None:
    """Until the outage has lasted OUTAGE_S, every request to every daemon is answered,
    promptly, with StoreUnavailable (no hang, no other error); each logs one line."""
    for d in cluster.daemons:
        assert_store_unavailable(d)
        assert wait_outage_logged(d) == 1
    slowest = 0.0
    clients = [d.client() for d in cluster.daemons]
    try:
        while time.monotonic() - began < OUTAGE_S:
            for client in clients:
                asked = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    client.status()
                slowest = max(slowest, time.monotonic() - asked)
            time.sleep(0.1)  # the pace of the requests, not a wait for an event
    finally:
        for client in clients:
            client.close()
    cluster.report(f"outage of {time.monotonic() - began:.1f}s; slowest refusal {slowest:.2f}s")
    assert slowest < 10, f"a request took {slowest:.1f}s to be refused"
    for d in cluster.daemons:
        assert d.running() and outage_lines(d) == 1


def wait_outage_logged(daemon: QueueDaemon) -> int:
    """Wait for the daemon's store_unavailable line; how many it logged."""
    return wait_for(lambda: outage_lines(daemon), timeout=10, what="a store_unavailable line")


def finish_drain(cluster: Cluster, ids: list[str], fault: str, max_outages: int) -> None:
    """Wait for the rest, then check the daemons, their logs and the bookkeeping."""
    took = cluster.wait_drained(JOBS, timeout=150)
    for d in cluster.daemons:
        assert d.running(), f"{cluster.node_id(d)} died:\n{d.stderr_text()[-3000:]}"
        # One clear line per outage, not one per failed call or retry.
        lines = outage_lines(d)
        assert lines <= max_outages, f"{cluster.node_id(d)} logged {lines} store_unavailable lines"
        # Every daemon was silent for longer than node_timeout, but none of them died:
        # nobody's jobs are taken back, nobody is evicted.
        membership = [e for e in d.log_events() if e.get("event") in ("node_dead", "node_evicted")]
        assert not membership, f"{cluster.node_id(d)}: {membership}"
    book = cluster.check_bookkeeping(ids)
    cluster.report(f"{fault}: drained {took:.1f}s after the fault; {book.summary()}")
    assert_bookkeeping(book)
    assert all(n > 0 for n in book.runs_by_node.values())


def assert_store_unavailable(daemon: QueueDaemon) -> None:
    """``queuectl status`` exits 1 with a "store unavailable" sentence, and the same
    request through the client raises StoreUnavailable (code store_unavailable)."""
    # The daemon may answer once more before it notices; it must notice soon.
    proc = wait_for(
        lambda: p if (p := daemon.run("status", timeout=30)).returncode != 0 else None,
        timeout=30,
        what="`queuectl status` to fail while the store is down",
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert UNAVAILABLE.search(proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    with daemon.client() as client, pytest.raises(StoreUnavailable) as caught:
        client.status()
    assert caught.value.code == "store_unavailable"
    assert daemon.running()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_mid_drain(
    fault_pg: PrivatePostgres, cluster_factory: ClusterFactory, mode: str
) -> None:
    cluster, ids = start_drain(cluster_factory, fault_pg)
    began = time.monotonic()
    with fault_pg.down(mode):
        unavailable_throughout(cluster, began)
    finish_drain(cluster, ids, f"PostgreSQL restart ({mode})", max_outages=1)


def test_backend_connections_terminated_mid_drain(
    fault_pg: PrivatePostgres, cluster_factory: ClusterFactory
) -> None:
    cluster, ids = start_drain(cluster_factory, fault_pg)
    killed = []
    for share in (2, 3):  # again at a half and at three quarters of the drain
        killed.append(fault_pg.terminate_backends())
        cluster.wait_completed(JOBS * share // 4, timeout=60)
    killed.append(fault_pg.terminate_backends())
    cluster.report(f"terminated backends: {killed}")
    assert killed[0] >= DAEMONS  # at least one connection of each daemon
    finish_drain(cluster, ids, "backends terminated", max_outages=len(killed))


def test_every_connection_slot_taken_mid_drain(
    fault_pg: PrivatePostgres, cluster_factory: ClusterFactory
) -> None:
    cluster, ids = start_drain(cluster_factory, fault_pg)
    # The daemons lose the connections they had and cannot open new ones meanwhile.
    began = time.monotonic()
    with fault_pg.fill_connections(evict=True) as held:
        assert len(held) == fault_pg.max_connections
        unavailable_throughout(cluster, began)
    finish_drain(cluster, ids, "connection slots full", max_outages=1)
