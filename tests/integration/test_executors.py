"""The execution engine: a few executor processes carry many concurrent jobs."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QueueDaemon, pid_alive, wait_for

pytestmark = pytest.mark.timeout(180)


def _executors(daemon: QueueDaemon) -> list[int]:
    out = []
    for pid in daemon.leftovers():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"queuectld.executor" in fh.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def _running_markers(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.suffix == ".run")


@pytest.mark.daemon_config(executors=2)
def test_300_concurrent_jobs_run_at_once_on_two_executors(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    """Every job marks itself running, then waits until all 300 are: only possible if
    all run at once. No timing is asserted (the benchmark holds the numbers)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    n = 300
    # Each job leaves a marker, then waits (bounded) for all n markers to exist.
    command = (
        f"touch {marks}/$QUEUECTL_JOB_ID.run; i=0; "
        f'while [ "$(ls {marks} | wc -l)" -lt {n} ] && [ $i -lt 600 ]; '
        "do sleep 0.1; i=$((i+1)); done; "
        f'[ "$(ls {marks} | wc -l)" -ge {n} ]'
    )
    with daemon.client() as c:
        c.enqueue_batch([{"id": f"c{i:03d}", "command": command, "timeout": 120} for i in range(n)])
        c.set_workers(n)
    wait_for(lambda: _running_markers(marks) == n, timeout=90, what=f"{n} jobs running at once")
    assert len(_executors(daemon)) == 2
    events = daemon.watch_until_idle(timeout=120)
    assert events[-1]["type"] == "idle"
    assert daemon.counts()["completed"] == n
    with daemon.client() as c:
        jobs, _ = c.list_jobs(limit=n)
    assert all(j["attempts"] == 1 and j["interruptions"] == 0 for j in jobs)


@pytest.mark.daemon_config(kill_grace=1, executors=1)
def test_a_timeout_among_many_jobs_of_one_executor_leaves_the_others_alone(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    daemon.cli("config", "set", "max-retries", "0")
    with daemon.client() as c:
        c.enqueue("sleep 300", id="slow", timeout=1)
        for i in range(5):
            c.enqueue(f"sleep 3; echo ok{i}", id=f"ok{i}", timeout=60)
        c.set_workers(6)
    slow = daemon.wait_for_state("slow", "dead", timeout=30)
    assert slow["history"][0]["outcome"] == "timeout"
    # The DLQ reason keeps the cause, not only the count (issue 14).
    assert "timed out after 1s" in slow["last_error"] and "failed once" in slow["last_error"]
    for i in range(5):
        job = daemon.wait_for_state(f"ok{i}", "completed", "dead", "failed", timeout=30)
        assert job["state"] == "completed", job
        assert (job["attempts"], job["interruptions"]) == (1, 0)
        assert f"ok{i}" in daemon.job_log(f"ok{i}")


@pytest.mark.daemon_config(executors=1)
def test_a_killed_executor_takes_its_jobs_groups_along_and_they_run_again(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    """Killing an executor under many jobs: all its jobs' groups die with it, and
    every job goes back to the queue once, recorded as interrupted, then completes."""
    pids = tmp_path / "pids"
    pids.mkdir()
    with daemon.client() as c:
        for i in range(20):
            c.enqueue(f"echo $$ > {pids}/{i}; sleep 2", id=f"j{i}", timeout=60)
        c.set_workers(20)
    wait_for(lambda: len(list(pids.iterdir())) == 20, timeout=30, what="20 jobs started")
    shells = [int(p.read_text()) for p in pids.iterdir()]
    (executor,) = _executors(daemon)
    for p in pids.iterdir():
        p.unlink()
    killed_at = time.time()
    os.kill(executor, signal.SIGKILL)
    wait_for(
        lambda: not any(pid_alive(s) for s in shells), timeout=10, what="the job groups to die"
    )
    for i in range(20):
        job = daemon.wait_for_state(f"j{i}", "completed", "dead", timeout=60)
        assert job["state"] == "completed", job
        outcomes = [a["outcome"] for a in job["history"]]
        assert outcomes == ["interrupted", "completed"], outcomes
        assert job["history"][0]["finished_at"] > job["history"][0]["started_at"]
    # Through the CLI too: the interrupted attempt keeps its real start (before the
    # kill), and lasts until the loss was noticed.
    shown = daemon.cli_json("show", "j0")
    first = shown["history"][0]
    assert first["outcome"] == "interrupted"
    assert first["started_at"] < killed_at < first["finished_at"]


def test_events_of_a_job_come_in_causal_order(daemon: QueueDaemon) -> None:
    """With an idle slot a job is claimed in its enqueue's own commit; still, its
    ``enqueued`` event comes before its ``started``."""
    daemon.cli("worker", "start", "--count", "1")
    wait_for(lambda: daemon.status()["workers"]["running"] == 1, what="a ready worker")
    events: list[dict[str, Any]] = []

    def follow() -> None:
        with daemon.client(timeout=60) as watcher:
            for event in watcher.watch():
                events.append(event)
                if event["type"] == "completed" and event["id"] == "last":
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    with daemon.client() as c:
        probes = iter(range(1000))

        def subscribed() -> bool:
            c.enqueue("true", id=f"probe{next(probes)}")
            return any(e["type"] == "enqueued" for e in events)

        wait_for(subscribed, what="the watch to be subscribed")
        for i in range(20):
            c.enqueue("true", id=f"e{i}")
        c.enqueue("true", id="last")
    follower.join(60)
    kinds: dict[str, list[str]] = {}
    for event in events:
        kinds.setdefault(event["id"], []).append(event["type"])
    for job_id in [f"e{i}" for i in range(20)] + ["last"]:
        assert kinds[job_id] == ["enqueued", "started", "completed"], (job_id, kinds[job_id])
