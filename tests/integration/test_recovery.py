"""Jobs survive the daemon: restarts, SIGTERM drains, kill -9; retries keep their schedule."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.harness import QueueDaemon, pid_alive, wait_for

pytestmark = pytest.mark.timeout(120)


def test_every_state_survives_a_restart(daemon: QueueDaemon, tmp_path: Path) -> None:
    daemon.cli("config", "set", "max-retries", "0")
    daemon.cli("config", "set", "backoff-base", "5")
    with daemon.client() as c:
        c.enqueue("true", id="done")
        c.enqueue("exit 4", id="dead")
        c.enqueue("exit 1", id="retrying", max_retries=3)
        c.enqueue("true", id="delayed", delay=3600)
        c.set_workers(1)
    daemon.wait_for_state("done", "completed")
    daemon.wait_for_state("dead", "dead")
    daemon.wait_for_state("retrying", "failed")
    daemon.cli("worker", "stop")
    daemon.cli("enqueue", "--id", "waiting", "--", "true")
    before = {j["id"]: j for j in daemon.cli_json("list")}

    daemon.restart()

    after = {j["id"]: j for j in daemon.cli_json("list")}
    assert {k: v["state"] for k, v in after.items()} == {
        "done": "completed",
        "dead": "dead",
        "retrying": "failed",
        "delayed": "waiting",
        "waiting": "pending",
    }
    for job_id in before:
        for key in ("attempts", "run_at", "created_at", "last_exit_code", "max_retries", "command"):
            assert after[job_id][key] == before[job_id][key], (job_id, key)
    assert daemon.job("dead")["last_exit_code"] == 4
    assert len(daemon.job("retrying")["history"]) == 1
    assert daemon.cli_json("config", "get", "max-retries")["value"] == 0
    assert daemon.cli_json("config", "get", "backoff-base")["value"] == 5.0


def test_sigterm_drains_a_running_job_to_completion(daemon: QueueDaemon, tmp_path: Path) -> None:
    started = tmp_path / "started"
    daemon.cli("enqueue", "--id", "busy", "--", f"touch {started}; sleep 1; echo finished")
    daemon.cli("worker", "start", "--count", "1")
    wait_for(started.exists, what="the job to start")
    daemon.restart()  # SIGTERM: running jobs finish before the daemon exits
    job = daemon.job("busy")
    assert job["state"] == "completed"
    assert (job["attempts"], job["interruptions"]) == (1, 0)
    assert "finished" in daemon.job_log("busy")
    assert any(e.get("event") == "drain_started" for e in daemon.log_events())


def test_kill9_mid_run_requeues_the_job_and_it_completes(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    command = f'echo "start $QUEUECTL_ATTEMPT $$" >> {marks}; sleep 2; echo "end $$" >> {marks}'
    daemon.cli("enqueue", "--id", "victim", "--", command)
    daemon.cli("enqueue", "--id", "queued", "--", "true")
    daemon.cli("worker", "start", "--count", "1")
    wait_for(lambda: marks.exists() and "start 1" in marks.read_text(), what="the job to start")
    first_shell = int(marks.read_text().split()[2])

    daemon.kill9()
    assert daemon.socket.exists()  # stale: the next daemon must take it over
    # The orphaned worker sees its daemon gone and stops the job's process group.
    wait_for(lambda: not pid_alive(first_shell), timeout=10, what="the orphaned job to stop")
    daemon.start()

    job = daemon.wait_for_state("victim", "completed", "dead", timeout=30)
    assert job["state"] == "completed"
    assert (job["attempts"], job["interruptions"]) == (1, 1)
    assert [a["outcome"] for a in job["history"]] == ["interrupted", "completed"]
    lines = marks.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "start", "end"]  # ran once to the end
    assert daemon.wait_for_state("queued", "completed")["attempts"] == 1
    ready = [e for e in daemon.log_events() if e.get("event") == "daemon_ready"]
    assert ready[-1]["recovered"] == 1


def test_jobs_enqueued_before_a_kill9_are_kept(daemon: QueueDaemon) -> None:
    with daemon.client() as c:
        ids = c.enqueue_batch([{"command": "true"} for _ in range(50)])
        c.enqueue("true", id="single")
    daemon.kill9()  # acknowledged means durable: no clean shutdown needed
    daemon.start()
    with daemon.client() as c:
        jobs, total = c.list_jobs(state="pending", limit=100)
    assert total == 51
    assert [j["id"] for j in jobs] == [*ids, "single"]


def test_retry_delays_show_in_attempt_timestamps(daemon: QueueDaemon) -> None:
    daemon.cli("config", "set", "backoff-base", "2")
    daemon.cli("config", "set", "max-retries", "2")
    daemon.cli("enqueue", "--id", "flaky", "--", "exit 1")
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("flaky", "dead", timeout=40)
    job = daemon.cli_json("show", "flaky")
    history = job["history"]
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert all(a["outcome"] == "failed" and a["exit_code"] == 1 for a in history)
    gaps = [
        later["started_at"] - earlier["finished_at"]
        for earlier, later in itertools.pairwise(history)
    ]
    # backoff-base ** attempts: 2 s after the first failure, 4 s after the second. Never
    # early; late only by scheduling noise (a busy machine gets a generous allowance).
    for gap, expected in zip(gaps, (2.0, 4.0), strict=True):
        assert expected - 0.01 <= gap <= expected + 1.5, gaps
    assert job["attempts"] == 3


@pytest.mark.daemon_config(drain_timeout=1, kill_grace=1)
def test_drain_deadline_stops_and_requeues_a_long_job(daemon: QueueDaemon, tmp_path: Path) -> None:
    started = tmp_path / "started"
    command = f'touch {started}; if [ "$QUEUECTL_ATTEMPT" = 1 ]; then sleep 60; fi; echo done'
    daemon.cli("enqueue", "--id", "long", "--", command)
    daemon.cli("worker", "start", "--count", "1")
    wait_for(started.exists, what="the job to start")
    t0 = time.monotonic()
    assert daemon.stop() == 0
    took = time.monotonic() - t0
    # drain_timeout (1 s), then SIGTERM to the job's group; well under the job's 60 s.
    assert 1.0 <= took < 15.0, took
    daemon.start()
    job = daemon.wait_for_state("long", "completed", "dead", timeout=30)
    assert job["state"] == "completed"
    assert [a["outcome"] for a in job["history"]] == ["interrupted", "completed"]
    assert (job["attempts"], job["interruptions"]) == (1, 1)


def test_a_second_daemon_on_the_same_home_refuses_to_start(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "mine", "--", "true")
    intruder = QueueDaemon(daemon.home)
    with pytest.raises(RuntimeError, match="did not become ready"):
        intruder.start(timeout=15)
    assert intruder.proc is None
    # The first one still owns the socket and the queue.
    assert daemon.running()
    assert daemon.job("mine")["state"] == "pending"
    assert daemon.socket.exists()
