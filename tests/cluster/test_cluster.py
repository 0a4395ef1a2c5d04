"""Several daemons on one PostgreSQL store (issue 12): shared drains, a host lost and
rescued, wake-ups across hosts. Run against the shared test server, a fresh schema each.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from queuectl.protocol import JobState
from tests.cluster.clusterlib import (
    Cluster,
    assert_bookkeeping,
    job_log_exists,
    read_float,
)
from tests.cluster.conftest import ClusterFactory
from tests.harness import QueueDaemon, wait_for

DRAIN_JOBS = 3000
KILL_JOBS = 900
NODE_TIMEOUT = 3.0
# Far above the pickup the test expects: a job started this late came from the poll.
SAFETY_POLL = 30.0


def nodes_view(daemon: QueueDaemon) -> list[dict[str, Any]]:
    """``queuectl nodes --json``: one entry per registered daemon."""
    answer = daemon.cli_json("nodes")
    entries = answer["nodes"] if isinstance(answer, dict) else answer
    return [dict(e) for e in entries]


def node_entry(daemon: QueueDaemon, name: str) -> dict[str, Any] | None:
    for entry in nodes_view(daemon):
        if entry.get("name") == name:
            return entry
    return None


def is_live(entry: dict[str, Any] | None) -> bool:
    return entry is not None and entry.get("state") == "live"


def test_three_daemons_drain_jobs_exactly_once(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory()
    daemons = cluster.start(3)

    began = time.monotonic()
    ids = cluster.enqueue_spread(DRAIN_JOBS)
    enqueued = time.monotonic() - began
    took = cluster.wait_drained(DRAIN_JOBS, timeout=150)

    book = cluster.check_bookkeeping(ids)
    cluster.report(
        f"3 daemons drained {DRAIN_JOBS} jobs: enqueue {enqueued:.1f}s, "
        f"drain {took:.1f}s after it; {book.summary()}"
    )
    assert_bookkeeping(book)
    # No fault: every job ran exactly once, and nothing was interrupted.
    assert book.runs == DRAIN_JOBS and book.extra_runs == 0 and book.interruptions == 0
    assert sorted(book.runs_by_node) == ["node0", "node1", "node2"], book.runs_by_node
    assert all(n > 0 for n in book.runs_by_node.values()), book.runs_by_node
    # Each job's output log is on the host that ran it.
    by_tag = {d.tag: d for d in daemons}
    missing = [r.job_id for r in cluster.runs() if not job_log_exists(by_tag[r.tag], r.job_id)]
    assert not missing, f"job logs not on the host that ran them: {missing[:10]}"


def _holding(cluster: Cluster, name: str) -> list[str]:
    """Ids of the jobs the node ``name`` holds a lease on now."""
    return sorted(c.job.id for c in cluster.read(lambda s: s.leased_jobs(name, None)))


def test_sigkill_one_of_three_is_rescued_and_rejoins(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(node_timeout=NODE_TIMEOUT)
    cluster.start(3)
    victim = cluster.daemons[1]
    name = cluster.node_id(victim)
    # Jobs long enough that the victim holds a few of them when it dies.
    ids = cluster.enqueue_spread(KILL_JOBS, command=cluster.job_command("sleep 0.1"))

    def victim_busy() -> list[str] | None:
        ran = sum(1 for r in cluster.runs() if r.tag == victim.tag)
        held = _holding(cluster, name)
        return held if ran >= 20 and held else None

    wait_for(victim_busy, timeout=60, what=f"{name} to have run jobs and hold some")
    victim.kill9()
    killed_at = time.monotonic()
    held = _holding(cluster, name)
    assert held, f"{name} held no job when it was killed"

    # A survivor notices the silence (node_timeout) and puts its jobs back in the queue.
    wait_for(
        lambda: not _holding(cluster, name),
        timeout=NODE_TIMEOUT + 30,
        interval=0.1,
        what=f"the jobs of {name} to be rescued",
    )
    rescue_s = time.monotonic() - killed_at
    cluster.report(f"{len(held)} jobs of the killed {name} rescued {rescue_s:.1f}s after the kill")
    # Within the node timeout (counted from its last heartbeat, before the kill), plus
    # a survivor's heartbeat round and the load of this machine.
    assert rescue_s <= NODE_TIMEOUT + 5, f"rescue took {rescue_s:.1f}s"
    # By exactly one survivor.
    rescuers = [
        cluster.node_id(d)
        for d in cluster.daemons
        if d is not victim
        for e in d.log_events()
        if e.get("event") == "node_dead" and e.get("node") == name
    ]
    assert len(rescuers) == 1, f"{name} rescued by {rescuers}"

    took = cluster.wait_drained(KILL_JOBS, timeout=150)
    book = cluster.check_bookkeeping(ids)
    cluster.report(f"drained {took:.1f}s after the rescue; {book.summary()}")
    assert_bookkeeping(book)
    held_jobs = cluster.read(lambda s: [s.get_job(i, with_history=True) for i in held])
    for job_id, job in zip(held, held_jobs, strict=True):
        assert job is not None
        outcomes = [a.outcome for a in job.history]
        assert "interrupted" in outcomes, f"{job_id} held by {name}: no interruption, {outcomes}"
    survivors = {cluster.node_id(d) for d in cluster.daemons if d is not victim}
    # ... and run again by the other two.
    tags = cluster.node_of_tag()
    rerun = {r.job_id for r in cluster.runs() if tags.get(r.tag) in survivors}
    assert set(held) <= rerun, f"not run again by a survivor: {sorted(set(held) - rerun)}"
    rescued = {n.name: n for n in cluster.read(lambda s: s.nodes())}[name]
    assert rescued.rescued_at is not None, rescued

    # Restarted with the same node_id, it registers again and is listed as live.
    watcher = next(d for d in cluster.daemons if cluster.node_id(d) in survivors)
    assert not is_live(node_entry(watcher, name))
    victim.start()
    entry = wait_for(
        lambda: e if is_live(e := node_entry(watcher, name)) else None,
        timeout=30,
        what=f"{name} to be live again in `queuectl nodes`",
    )
    cluster.report(f"{name} rejoined: {entry}")
    row = {n.name: n for n in cluster.read(lambda s: s.nodes())}[name]
    assert row.rescued_at is None and row.stopped_at is None, row
    assert row.started_at > rescued.started_at, (row, rescued)
    # ... and takes its share of new work again.
    more = cluster.enqueue_spread(90, prefix="r", command=cluster.job_command("sleep 0.05"))
    cluster.wait_completed(KILL_JOBS + len(more), timeout=60)
    again = [r for r in cluster.runs() if r.job_id.startswith("r") and r.tag == victim.tag]
    cluster.report(f"{name} ran {len(again)} of {len(more)} jobs enqueued after it rejoined")
    assert again, f"{name} ran none of {len(more)} new jobs after it rejoined"


def wait_stamp(path: Path, what: str) -> float:
    """The time a job wrote to ``path``, once it has."""
    return wait_for(lambda: read_float(path), timeout=SAFETY_POLL * 2, interval=0.01, what=what)


def test_job_enqueued_on_a_host_without_workers_starts_on_another(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(safety_poll=SAFETY_POLL)
    host_a = cluster.add(workers=0)
    host_b = cluster.add(workers=2)
    stamps = cluster.root / "stamps"
    stamps.mkdir()
    # Warm-up: B's executors are up and its dispatcher idle before the clock starts.
    cluster.enqueue_spread(1, prefix="warm", via=[host_b])
    cluster.wait_completed(1, timeout=30)

    latencies = []
    with host_a.client() as client:
        for n in range(5):
            stamp = stamps / f"p{n}"
            job = client.enqueue(f"date +%s.%N > {stamp}.tmp && mv {stamp}.tmp {stamp}", id=f"p{n}")
            acked = time.time()
            started = wait_stamp(stamp, f"job {job['id']} to start")
            latencies.append(started - acked)
            host_a.wait_for_state(job["id"], JobState.COMPLETED.value, timeout=30)
            assert job_log_exists(host_b, job["id"]) and not job_log_exists(host_a, job["id"])
    cluster.report(
        "pickup across hosts (enqueue reply on A -> job start on B): "
        + ", ".join(f"{x * 1000:.0f}ms" for x in latencies)
        + f"; median {statistics.median(latencies) * 1000:.0f}ms"
    )
    # Well under the safety poll: the wake-up came from LISTEN/NOTIFY.
    assert max(latencies) < SAFETY_POLL / 10, latencies
