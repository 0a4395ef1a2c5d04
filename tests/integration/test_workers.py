"""Workers: concurrency without double execution, scaling, graceful stop, timeouts."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from queuectl.errors import Conflict
from tests.harness import QueueDaemon, pid_alive, wait_for

pytestmark = pytest.mark.timeout(120)


def test_four_workers_run_500_jobs_each_exactly_once(
    daemon: QueueDaemon, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    out = tmp_path / "ran.txt"
    ids = [f"job{n:03d}" for n in range(500)]
    with daemon.client() as c:
        assert c.enqueue_batch([{"id": i, "command": f"echo {i} >> {out}"} for i in ids]) == ids
        assert c.status()["counts"]["pending"] == 500
        started = time.monotonic()
        assert c.set_workers(4)["desired"] == 4
    events = daemon.watch_until_idle(timeout=60)
    took = time.monotonic() - started
    record_property("drain_500_jobs_4_workers_seconds", round(took, 2))
    print(f"500 jobs, 4 workers: {took:.2f}s")

    # Counted by the jobs' own side effect: every id once, nothing else.
    ran = Counter(out.read_text().split())
    assert sorted(ran) == ids
    assert set(ran.values()) == {1}
    # And by the daemon's bookkeeping.
    assert daemon.counts() == {
        "pending": 0,
        "processing": 0,
        "completed": 500,
        "failed": 0,
        "dead": 0,
        "waiting": 0,
        "blocked": 0,
        "cancelled": 0,
    }
    with daemon.client() as c:
        jobs, total = c.list_jobs(limit=1000)
    assert total == 500
    assert all(j["attempts"] == 1 and j["interruptions"] == 0 for j in jobs)
    completed = [e["id"] for e in events if e["type"] == "completed"]
    assert len(completed) == len(set(completed))
    assert events[-1]["type"] == "idle"
    executors = {e.get("worker") for e in events if e["type"] == "started"}
    assert len(executors) == min(4, os.cpu_count() or 1)  # the work was shared


def test_worker_count_is_kept_across_restarts(daemon: QueueDaemon) -> None:
    assert daemon.cli("worker", "start", "--count", "3").strip() == "workers: 3 desired"
    wait_for(lambda: daemon.status()["workers"]["running"] == 3, what="3 workers running")
    daemon.restart()
    assert daemon.status()["workers"]["desired"] == 3
    wait_for(lambda: daemon.status()["workers"]["running"] == 3, what="3 workers after restart")
    # Scaling down is kept too.
    daemon.cli("worker", "start", "--count", "1")
    wait_for(lambda: daemon.status()["workers"]["running"] == 1, what="1 worker running")
    daemon.cli("worker", "stop")
    daemon.restart()
    workers = daemon.status()["workers"]
    assert (workers["desired"], workers["running"]) == (0, 0)


def test_worker_stop_lets_the_running_job_finish(daemon: QueueDaemon, tmp_path: Path) -> None:
    started, done, release = tmp_path / "started", tmp_path / "done", tmp_path / "release"
    # The job runs until the test releases it (bounded), so it is surely still running
    # when `worker stop` answers, however slow the machine.
    wait = f"i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
    daemon.cli("enqueue", "--id", "long", "--", f"touch {started}; {wait}; touch {done}")
    daemon.cli("worker", "start", "--count", "1")
    wait_for(started.exists, what="the job to start")
    out = daemon.cli("worker", "stop")
    release.touch()
    assert out.strip() == "workers stopping: 1 finishing their current job"
    # No new claims while (and after) the running job finishes.
    daemon.cli("enqueue", "--id", "next", "--", "true")
    job = daemon.wait_for_state("long", "completed", "failed", "pending", "dead")
    assert job["state"] == "completed", job
    assert (job["attempts"], job["interruptions"]) == (1, 0)
    assert job["history"][0]["outcome"] == "completed"
    assert done.exists()
    wait_for(lambda: daemon.status()["workers"]["running"] == 0, what="the worker to exit")
    assert daemon.job("next")["state"] == "pending"


@pytest.mark.daemon_config(kill_grace=1)
@pytest.mark.parametrize(
    "ignores_sigterm",
    [False, True],
    ids=["dies-on-sigterm", "ignores-sigterm"],
)
def test_a_timed_out_job_and_its_forked_child_are_gone(
    daemon: QueueDaemon, tmp_path: Path, ignores_sigterm: bool
) -> None:
    trap = "trap '' TERM; " if ignores_sigterm else ""
    command = f"{trap}sleep 300 & echo $! > child.pid; echo $$ > shell.pid; sleep 300"
    daemon.cli("config", "set", "max-retries", "0")
    daemon.cli("enqueue", "--id", "slow", "--timeout", "1", "--", command, cwd=tmp_path)
    daemon.cli("worker", "start", "--count", "1")
    child_file = tmp_path / "child.pid"
    shell_file = tmp_path / "shell.pid"
    # Both files are written by the job; wait for the second, whole (it may be empty a moment).
    wait_for(lambda: child_file.exists() and child_file.read_text().strip(), what="child pid")
    wait_for(lambda: shell_file.exists() and shell_file.read_text().strip(), what="shell pid")
    child = int(child_file.read_text())
    shell = int(shell_file.read_text())
    assert pid_alive(child)
    job = daemon.wait_for_state("slow", "dead", timeout=30)
    (attempt,) = job["history"]
    assert attempt["outcome"] == "timeout"
    assert attempt["error"] == "timed out after 1s"
    took = attempt["finished_at"] - attempt["started_at"]
    # SIGTERM at 1 s; a group that ignores it gets SIGKILL after the 1 s grace period.
    assert 1.0 <= took < (2.0 if not ignores_sigterm else 3.0) + 2.0, took
    if ignores_sigterm:
        assert took >= 2.0
    wait_for(lambda: not pid_alive(child), timeout=5, what=f"forked child {child} to die")
    assert not pid_alive(shell)
    assert not {child, shell} & set(daemon.leftovers())
    assert "Outcome: timeout" in daemon.job_log("slow")


def test_a_finished_job_leaves_nothing_running(daemon: QueueDaemon, tmp_path: Path) -> None:
    daemon.cli("enqueue", "--id", "bg", "--", "sleep 300 & echo $! > child.pid", cwd=tmp_path)
    daemon.cli("worker", "start", "--count", "1")
    job = daemon.wait_for_state("bg", "completed", "failed", "dead")
    assert job["state"] == "completed"
    child = int((tmp_path / "child.pid").read_text())
    wait_for(lambda: not pid_alive(child), timeout=5, what=f"background child {child} to end")


def test_a_killed_worker_is_replaced_and_its_job_requeued(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    daemon.cli("enqueue", "--id", "k", "--", f"touch {started}; sleep 2; echo ok")
    daemon.cli("worker", "start", "--count", "1")
    wait_for(started.exists, what="the job to start")
    workers = [p for p in daemon.leftovers() if _is_worker(p)]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    job = daemon.wait_for_state("k", "completed", "dead", timeout=30)
    assert job["state"] == "completed"
    assert (job["attempts"], job["interruptions"]) == (1, 1)
    outcomes = [a["outcome"] for a in job["history"]]
    assert outcomes == ["interrupted", "completed"]
    wait_for(lambda: daemon.status()["workers"]["running"] == 1, what="a replacement worker")


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"queuectld.executor" in fh.read()
    except OSError:
        return False


def test_a_job_that_keeps_killing_its_worker_ends_dead(daemon: QueueDaemon) -> None:
    daemon.cli("config", "set", "max-interruptions", "1")
    # $PPID of the job's shell is its worker. The pause lets the worker report the job's
    # process group first: a worker killed before it does leaves its job running (a known
    # race, not covered here).
    daemon.cli("enqueue", "--id", "crasher", "--", "sleep 0.3; kill -9 $PPID; sleep 30")
    daemon.cli("enqueue", "--id", "innocent", "--", "true")
    daemon.cli("worker", "start", "--count", "1")
    job = daemon.wait_for_state("crasher", "dead", timeout=30)
    assert [a["outcome"] for a in job["history"]] == ["interrupted", "interrupted"]
    assert (job["attempts"], job["interruptions"]) == (0, 2)
    assert "interrupted 2 times" in (job["last_error"] or "")
    assert daemon.wait_for_state("innocent", "completed")["attempts"] == 1
    wait_for(lambda: daemon.status()["workers"]["running"] == 1, what="a worker again")
    # Each dead worker's job group was ended with it: only the new worker is left.
    wait_for(lambda: len(daemon.leftovers()) == 1, timeout=5, what="the crashed jobs to end")


def test_the_job_environment(daemon: QueueDaemon, tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    command = (
        f'{{ pwd; echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT"; cat; echo "stdin $?"; '
        f"ps -o pgid= -p $$; echo $$; }} > {out}"
    )
    daemon.cli("enqueue", "--id", "envjob", "--", command, cwd=tmp_path)
    daemon.cli("worker", "start", "--count", "1")
    assert daemon.wait_for_state("envjob", "completed", "dead")["state"] == "completed"
    cwd, ids, stdin, pgid, pid = out.read_text().splitlines()
    assert cwd == str(tmp_path)  # where `queuectl enqueue` ran
    assert ids == "envjob 1"
    assert stdin == "stdin 0"  # stdin is /dev/null: cat sees EOF at once
    assert int(pgid) == int(pid)  # the job leads its own process group


def test_huge_output_is_capped_in_the_log(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "loud", "--", "head -c 3000000 /dev/zero | tr '\\0' a")
    daemon.cli("worker", "start", "--count", "1")
    assert daemon.wait_for_state("loud", "completed", "dead")["state"] == "completed"
    log = daemon.job_log("loud")
    assert "[... output truncated: " in log
    assert 1024 * 1024 <= len(log) < 1024 * 1024 + 4096
    # `queuectl logs` reads it in chunks and prints all of it.
    assert daemon.cli("logs", "loud") == log


def test_concurrent_clients_share_commits_and_ids_stay_unique(daemon: QueueDaemon) -> None:
    def enqueue_many(n: int) -> list[str]:
        with daemon.client() as c:
            return [c.enqueue("true")["id"] for _ in range(n)]

    def claim_same_id(_: int) -> str:
        with daemon.client() as c:
            try:
                return c.enqueue("echo first", id="same")["id"]
            except Conflict:
                return "conflict"

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(enqueue_many, [25] * 8))
        same = list(pool.map(claim_same_id, range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert sorted(same) == ["conflict"] * 7 + ["same"]
    with daemon.client() as c:
        assert c.status()["counts"]["pending"] == 201
        metrics = c.metrics()
    assert metrics["store_calls"] >= 209


def test_a_delayed_job_waits_for_its_time(daemon: QueueDaemon) -> None:
    daemon.cli("worker", "start", "--count", "1")
    wait_for(lambda: daemon.status()["workers"]["running"] == 1, what="a worker")
    daemon.cli("enqueue", "--id", "later", "--delay", "1.5", "--", "true")
    daemon.cli("enqueue", "--id", "now", "--", "true")
    assert daemon.wait_for_state("now", "completed")["state"] == "completed"
    assert daemon.job("later")["state"] in ("waiting", "processing", "completed")
    job = daemon.wait_for_state("later", "completed", timeout=20)
    assert job["history"][0]["started_at"] >= job["created_at"] + 1.5
    assert job["history"][0]["started_at"] < job["created_at"] + 1.5 + 3.0


def test_default_timeout_setting_applies_to_new_attempts(daemon: QueueDaemon) -> None:
    daemon.cli("config", "set", "default-timeout", "0.5")
    daemon.cli("config", "set", "max-retries", "0")
    daemon.cli("enqueue", "--id", "sleepy", "--", "sleep 30")
    daemon.cli("enqueue", "--id", "own-timeout", "--timeout", "20", "--", "sleep 1")
    daemon.cli("worker", "start", "--count", "2")
    sleepy = daemon.wait_for_state("sleepy", "dead", timeout=20)
    assert sleepy["timeout"] == 0.5
    assert sleepy["history"][0]["outcome"] == "timeout"
    assert sleepy["history"][0]["error"] == "timed out after 0.5s"
    assert daemon.wait_for_state("own-timeout", "completed", "dead")["state"] == "completed"
