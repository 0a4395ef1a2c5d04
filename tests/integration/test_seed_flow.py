"""The seed README's flows (sections 2.1 and 5.1-5.4) through a real daemon and the real CLI.

Retries are made short with ``config set backoff-base 1`` (a retry then waits 1 s) so
the flows take seconds, not the seed's default minutes.
"""

from __future__ import annotations

import calendar
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DaemonFactory
from tests.harness import TAG_VAR, QueueDaemon, clean_env, tagged_pids, wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


def status_table(out: str) -> dict[str, int]:
    """The ``state | count`` rows of ``queuectl status``."""
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"(\w+)\s*\|\s*(\d+)", line.strip())
        if m:
            rows[m.group(1)] = int(m.group(2))
    return rows


def table_ids(out: str) -> list[str]:
    """The first column of a ``list``/``dlq list`` table, header and rule skipped."""
    return [line.split("|")[0].strip() for line in out.splitlines()[2:] if "|" in line]


def fast_retries(daemon: QueueDaemon, max_retries: int = 1) -> None:
    daemon.cli("config", "set", "max-retries", str(max_retries))
    daemon.cli("config", "set", "backoff-base", "1")


def test_cli_demo_flow_section_2_1(daemon: QueueDaemon) -> None:
    fast_retries(daemon)
    assert status_table(daemon.cli("status")) == dict.fromkeys(
        ("pending", "processing", "completed", "failed", "dead"), 0
    )
    # Step 1: four jobs in the seed's JSON form.
    for spec in (
        '{"id":"job1","command":"echo Job 1 executed"}',
        '{"id":"job2","command":"sleep 2"}',
        '{"id":"job3","command":"not_a_real_command"}',
        '{"id":"job4","command":"echo Final Job done"}',
    ):
        assert daemon.cli("enqueue", spec).startswith("enqueued job job")
    assert status_table(daemon.cli("status"))["pending"] == 4
    # Step 2: two workers; --follow prints events until nothing is left to run.
    out = daemon.cli("worker", "start", "--count", "2", "--follow")
    assert "[INFO] [job1] processing -> `echo Job 1 executed`" in out
    assert "[INFO] [job1] completed ✔" in out
    assert "[INFO] [job2] completed ✔" in out
    assert "[INFO] [job4] completed ✔" in out
    assert "[WARN] [job3] failed (command not found" in out
    assert "[WARN] [job3] moved to DLQ (command not found" in out
    assert out.rstrip().endswith("queue drained: no job pending, running or waiting for a retry")
    daemon.cli("worker", "stop")
    # Step 3: status.
    counts = status_table(daemon.cli("status"))
    assert counts == {"pending": 0, "processing": 0, "completed": 3, "failed": 0, "dead": 1}
    # Step 4: the DLQ holds job3.
    assert table_ids(daemon.cli("dlq", "list")) == ["job3"]
    # Step 5: retry it.
    assert "job job3 moved from the DLQ to pending" in daemon.cli("dlq", "retry", "job3")
    # Step 6: it is pending (no worker runs now).
    pending = daemon.cli("list", "--state", "pending")
    assert table_ids(pending) == ["job3"]
    assert "0/2" in pending  # attempts reset: 0 of 1 + max-retries
    # Step 7: one worker processes it again (and it fails again, as in the seed).
    again = daemon.cli("worker", "start", "--count", "1", "--follow")
    assert "[INFO] [job3] processing -> `not_a_real_command`" in again
    assert "[WARN] [job3] moved to DLQ" in again
    assert "job1" not in again  # completed jobs are not run again
    job3 = daemon.job("job3")
    assert job3["state"] == "dead"
    assert len(job3["history"]) == 4  # two runs before the retry, two after
    # Step 8: the job's log.
    log = daemon.job_log("job1")
    assert "Command: echo Job 1 executed" in log
    assert "Job 1 executed\n" in log
    assert "Exit Code: 0" in log


def test_quick_functional_test_section_5_1(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", '{"id":"job1","command":"echo Hello QueueCTL"}')
    out = daemon.cli("worker", "start", "--count", "1", "--follow")
    lines = out.splitlines()
    assert lines[0] == "workers: 1 desired"
    assert lines[1].startswith("[INFO] [job1] processing -> `echo Hello QueueCTL`")
    assert lines[2] == "[INFO] [job1] completed ✔"
    status = daemon.cli("status")
    assert status_table(status)["completed"] == 1
    assert "workers: 1 running / 1 desired" in status


def test_retry_and_dlq_section_5_2(daemon: QueueDaemon) -> None:
    fast_retries(daemon, max_retries=1)
    daemon.cli("enqueue", '{"id":"job_fail","command":"not_a_real_command"}')
    out = daemon.cli("worker", "start", "--count", "1", "--follow")
    assert "[WARN] [job_fail] failed (command not found (exit code 127)); retry 1/1 in 1s" in out
    assert "[WARN] [job_fail] moved to DLQ (command not found" in out
    daemon.cli("worker", "stop")
    dlq = daemon.cli("dlq", "list")
    assert table_ids(dlq) == ["job_fail"]
    assert "127" in dlq
    job = daemon.job("job_fail")
    assert job["state"] == "dead" and job["attempts"] == 2
    assert job["last_exit_code"] == 127
    assert [a["outcome"] for a in job["history"]] == ["not_found", "not_found"]
    daemon.cli("dlq", "retry", "job_fail")
    assert status_table(daemon.cli("status"))["pending"] == 1
    assert table_ids(daemon.cli("dlq", "list")) == []
    job = daemon.job("job_fail")
    assert (job["state"], job["attempts"]) == ("pending", 0)


def test_persistence_section_5_3(daemon: QueueDaemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    # Three jobs enqueued while no worker runs, then the daemon restarts.
    for n in (1, 2, 3):
        daemon.cli("enqueue", "--id", f"p{n}", "--", f"echo {n} >> {out}")
    daemon.restart()
    assert status_table(daemon.cli("status"))["pending"] == 3
    assert [j["id"] for j in daemon.cli_json("list", "--state", "pending")] == ["p1", "p2", "p3"]
    assert not out.exists()
    daemon.cli("worker", "start", "--count", "1", "--follow")
    assert status_table(daemon.cli("status"))["completed"] == 3
    assert sorted(out.read_text().split()) == ["1", "2", "3"]
    # Completed jobs, their history and the worker count survive the next restart too.
    daemon.restart()
    assert status_table(daemon.cli("status"))["completed"] == 3
    assert daemon.job("p2")["history"][0]["outcome"] == "completed"
    assert daemon.status()["workers"]["desired"] == 1


def test_logging_section_5_4(daemon: QueueDaemon) -> None:
    fast_retries(daemon, max_retries=1)
    before = time.time()
    daemon.cli("enqueue", "--id", "job1", "--", "echo to-stdout; echo to-stderr >&2")
    daemon.cli("enqueue", "--id", "twice", "--", 'echo "run $QUEUECTL_ATTEMPT"; exit 3')
    daemon.cli("worker", "start", "--count", "1", "--follow")
    after = time.time()
    assert sorted(os.listdir(daemon.log_dir)) == ["job_job1.txt", "job_twice.txt"]

    log = daemon.job_log("job1")
    assert log.startswith("=== job job1 attempt 1 ===\n")
    assert "Command: echo to-stdout; echo to-stderr >&2\n" in log
    assert "Exit Code: 0\n" in log
    stdout = log.split("--- STDOUT ---\n", 1)[1].split("--- STDERR ---\n", 1)
    assert stdout[0] == "to-stdout\n"
    assert stdout[1].startswith("to-stderr\n")
    stamps = re.findall(r"^(Started|Finished): (\S+)$", log, re.M)
    assert [k for k, _ in stamps] == ["Started", "Finished"]
    for _, stamp in stamps:
        ts = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        assert before - 1 <= ts <= after + 1, stamp
    # `queuectl logs` prints the same file.
    assert daemon.cli("logs", "job1") == log

    # Attempts are appended, never overwritten.
    twice = daemon.job_log("twice")
    blocks = re.findall(r"^=== job twice attempt (\d+) ===$", twice, re.M)
    assert blocks == ["1", "2"]
    assert "run 1\n" in twice and "run 2\n" in twice
    assert twice.count("Exit Code: 3\n") == 2
    assert twice.index("run 1") < twice.index("run 2")


def test_demo_script(daemon_factory: DaemonFactory) -> None:
    """``make demo``'s script, start to end, with its own per-user daemon (autostarted)."""
    home = daemon_factory(start=False)
    env = clean_env(
        {
            "QUEUECTL_HOME": str(home.home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            TAG_VAR: home.tag,
        }
    )
    proc = subprocess.run(
        ["bash", str(REPO / "tests" / "demo.sh")],
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=110,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo.sh failed ({proc.returncode}):\n{out}\n{proc.stderr}"
    assert f"state directory: {home.home}" in out
    assert "[INFO] [job1] processing -> `echo Job 1 executed`" in out
    assert "[INFO] [job1] completed ✔" in out
    assert "[INFO] [job4] completed ✔" in out
    assert "[WARN] [job3] moved to DLQ (command not found" in out
    assert "job job3 moved from the DLQ to pending" in out
    assert re.search(r"^job3 +\| pending", out, re.M)
    assert re.search(r"^completed +\| 3$", out, re.M)
    assert re.search(r"^jobs_dead +\| 1$", out, re.M)
    assert "Command: echo Job 1 executed" in out
    assert "Job 1 executed" in out
    # The demo stopped the daemon it started.
    wait_for(lambda: not tagged_pids(home.tag), timeout=15, what="the demo's daemon to exit")
    assert not home.socket.exists()


def test_a_flaky_job_completes_on_its_retry(daemon: QueueDaemon) -> None:
    fast_retries(daemon, max_retries=3)
    daemon.cli("enqueue", "--id", "flaky", "--", '[ "$QUEUECTL_ATTEMPT" -ge 2 ]')
    out = daemon.cli("worker", "start", "--count", "1", "--follow")
    assert "[WARN] [flaky] failed (exit code 1); retry 1/3 in 1s" in out
    assert "[INFO] [flaky] completed ✔" in out
    job = daemon.job("flaky")
    assert (job["state"], job["attempts"], job["last_exit_code"]) == ("completed", 2, 0)
    assert [a["outcome"] for a in job["history"]] == ["failed", "completed"]
