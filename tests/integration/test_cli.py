"""The CLI's other commands: config, --json everywhere, watch, metrics, autostart."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from queuectl.protocol import JobState
from tests.conftest import DaemonFactory
from tests.harness import QueueDaemon, pid_alive, tagged_pids, wait_for

pytestmark = pytest.mark.timeout(60)

SETTINGS = {
    "max-retries",
    "backoff-base",
    "backoff-max",
    "jitter",
    "default-timeout",
    "max-interruptions",
}


def test_config_set_get_list(daemon: QueueDaemon) -> None:
    assert daemon.cli("config", "get", "max-retries").strip() == "max-retries = 3"
    assert daemon.cli("config", "set", "max-retries", "5").strip() == "max-retries = 5"
    assert daemon.cli("config", "get", "max-retries").strip() == "max-retries = 5"
    assert daemon.cli("config", "set", "backoff_base", "1.5").strip() == "backoff-base = 1.5"
    listing = daemon.cli("config", "list")
    assert re.search(r"^max-retries +\| 5 +\| 3 +\|", listing, re.M)
    assert re.search(r"^backoff-base +\| 1.5 +\| 2.0 +\|", listing, re.M)
    settings = {s["key"]: s for s in daemon.cli_json("config", "list")}
    assert set(settings) == SETTINGS
    assert settings["max-retries"]["value"] == 5 and settings["max-retries"]["default"] == 3
    assert all(s["help"] for s in settings.values())
    # Applies at once: a new job without its own max_retries follows the setting...
    job = json.loads(daemon.cli("enqueue", "--json", "--", "true"))
    assert job["max_retries"] == 5
    # ...and is kept in the queue database across a restart.
    daemon.restart()
    assert daemon.cli_json("config", "get", "max-retries")["value"] == 5
    assert daemon.cli_json("config", "get", "backoff-base")["value"] == 1.5


def test_json_output_of_every_reading_command(daemon: QueueDaemon) -> None:
    daemon.cli("config", "set", "max-retries", "0")
    enq = daemon.cli_json("enqueue", '{"id":"ok","command":"echo out"}')
    assert enq["id"] == "ok" and enq["state"] == "pending" and enq["command"] == "echo out"
    flag = json.loads(
        daemon.cli("enqueue", "--json", "--id", "bad", "--timeout", "5", "--", "exit", "2")
    )
    assert flag["command"] == "exit 2" and flag["timeout"] == 5.0
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("ok", "completed")
    daemon.wait_for_state("bad", "dead")

    status = daemon.cli_json("status")
    assert status["counts"] == {
        "pending": 0,
        "processing": 0,
        "completed": 1,
        "failed": 0,
        "dead": 1,
        "waiting": 0,
        "blocked": 0,
        "cancelled": 0,
    }
    assert status["workers"]["desired"] == 1 and status["draining"] is False

    listed = daemon.cli_json("list")
    assert [j["id"] for j in listed] == ["ok", "bad"]
    assert [j["id"] for j in daemon.cli_json("list", "--state", "completed")] == ["ok"]
    assert daemon.cli_json("list", "--state", "pending") == []
    assert [j["id"] for j in daemon.cli_json("list", "--limit", "1", "--offset", "1")] == ["bad"]

    shown = daemon.cli_json("show", "ok")
    assert shown["state"] == "completed" and shown["last_exit_code"] == 0
    (attempt,) = shown["history"]
    assert attempt["outcome"] == "completed" and attempt["finished_at"] >= attempt["started_at"]
    assert shown["cwd"] == str(daemon.home)  # where `queuectl enqueue` ran

    dead = daemon.cli_json("dlq", "list")
    assert [(j["id"], j["last_exit_code"]) for j in dead] == [("bad", 2)]
    retried = daemon.cli_json("dlq", "retry", "bad")
    assert retried["state"] == "pending" and retried["attempts"] == 0

    metrics = daemon.cli_json("metrics")
    assert metrics["jobs_total"] == 2
    assert metrics["attempts"]["attempts_completed"] >= 1
    assert metrics["workers"]["desired"] == 1

    # People get tables; the same facts.
    assert "ok" in daemon.cli("list") and "bad" in daemon.cli("dlq", "list")
    assert "attempt" in daemon.cli("show", "ok")
    assert re.search(r"^jobs_total +\| 2$", daemon.cli("metrics"), re.M)


def test_enqueue_file_and_generated_ids(daemon: QueueDaemon, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"command":"true"}\n\n{"id":"named","command":"true","max_retries":1}\n{"command":"x"}\n'
    )
    result = daemon.cli_json("enqueue", "--file", str(jobs))
    assert result["count"] == 3
    assert result["ids"][1] == "named"
    generated = [result["ids"][0], result["ids"][2]]
    assert all(i.isdigit() for i in generated) and generated[0] != generated[1]
    one = json.loads(daemon.cli("enqueue", "--json", "--", "echo", "two words"))
    assert one["command"] == "echo 'two words'"  # argv joined as the shell would read it
    assert one["id"].isdigit() and one["id"] not in generated
    from_stdin = daemon.run("enqueue", "--file", "-", input='{"id":"piped","command":"true"}\n')
    assert from_stdin.returncode == 0 and from_stdin.stdout.strip() == "enqueued 1 jobs"
    assert daemon.counts()[JobState.PENDING.value] == 5


def test_logs_and_watch(daemon: QueueDaemon) -> None:
    # Each watch line starts with its local time.
    assert re.match(r"\d\d:\d\d:\d\d \[INFO\] queue drained", daemon.cli("watch", "--until-idle"))
    daemon.cli("enqueue", "--id", "w", "--", "printf 'line1\\nline2\\n'")
    assert daemon.cli("logs", "w") == ""  # not run yet: no output, no error
    daemon.cli("worker", "start", "--count", "1")
    out = daemon.cli("watch", "--until-idle", timeout=30)
    assert re.match(r"\d\d:\d\d:\d\d \[INFO\] queue drained", out.splitlines()[-1])
    logs = daemon.cli("logs", "w")
    assert "line1\nline2\n" in logs and "Exit Code: 0" in logs


def test_follow_and_watch_end_when_only_scheduled_jobs_wait(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "now", "--", "true")
    daemon.cli("enqueue", "--id", "later", "--delay", "3600", "--", "true")
    out = daemon.cli("worker", "start", "--count", "1", "--follow", timeout=30)
    assert "[INFO] [now] completed" in out
    last = out.splitlines()[-1]
    assert last.startswith("[INFO] nothing to run now: 1 job waits for a later time, the first at")
    events = [json.loads(x) for x in daemon.cli("watch", "--until-idle", "--json").splitlines()]
    (idle,) = events
    assert idle["type"] == "idle" and idle["scheduled"] == 1
    assert idle["next_at"] == daemon.job("later")["run_at"]
    assert daemon.job("later")["state"] == "waiting"


def test_autostart_and_shutdown(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)  # a home and a cleanup; the CLI starts the daemon
    env = {"QUEUECTL_NO_AUTOSTART": ""}
    proc = home.run("status", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pending" in proc.stdout and "workers: 0 running" in proc.stdout
    assert home.socket.exists()
    pid = int((home.home / "queuectld.pid").read_text())
    assert pid_alive(pid)
    assert (home.home / "queuectld.log").exists()
    # The next command uses the running daemon.
    assert home.run("enqueue", "--id", "a", "--", "true", env=env).returncode == 0
    assert int((home.home / "queuectld.pid").read_text()) == pid
    proc = home.run("shutdown", env=env)
    assert proc.returncode == 0 and "shutting down" in proc.stdout
    wait_for(lambda: not pid_alive(pid), timeout=20, what="the autostarted daemon to exit")
    assert not home.socket.exists()
    # Its queue is where the next one finds it.
    proc = home.run("list", "--json", env=env)
    assert [j["id"] for j in json.loads(proc.stdout)] == ["a"]
    home.run("shutdown", env=env)
    wait_for(lambda: not tagged_pids(home.tag), timeout=20, what="the second daemon to exit")


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--no-autostart"], {"QUEUECTL_NO_AUTOSTART": ""}),
        ([], {"QUEUECTL_NO_AUTOSTART": "1"}),
    ],
    ids=["flag", "environment"],
)
def test_no_autostart(daemon_factory: DaemonFactory, flags: list[str], env: dict[str, str]) -> None:
    home = daemon_factory(start=False)
    proc = home.run(*flags, "status", env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("queuectl: no queuectld is listening on ")
    assert "\n" not in proc.stderr.strip()
    assert not home.socket.exists()
    assert not (home.home / "queuectld.pid").exists()
    assert tagged_pids(home.tag) == []
    assert os.listdir(home.home) == []


def test_a_command_after_dashes_is_never_json(daemon: QueueDaemon) -> None:
    job = json.loads(daemon.cli("enqueue", "--json", "--", "{ echo grouped; }"))
    assert job["command"] == "{ echo grouped; }"
    daemon.cli("worker", "start", "--count", "1")
    assert daemon.wait_for_state(job["id"], "completed", "dead")["state"] == "completed"
    assert "grouped\n" in daemon.job_log(job["id"])
    # Without `--` a single argument starting with "{" is the seed's JSON form.
    assert daemon.run("enqueue", "{ echo grouped; }").returncode == 2


def test_shutdown_command_stops_a_foreground_daemon(daemon: QueueDaemon) -> None:
    assert daemon.cli("shutdown").strip() == "queuectld is shutting down"
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 0
    assert not daemon.socket.exists()
    assert daemon.run("status").returncode == 1


def test_autostart_replaces_a_stale_socket(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "kept", "--", "true")
    daemon.kill9()
    assert daemon.socket.exists()  # left behind by the killed daemon
    env = {"QUEUECTL_NO_AUTOSTART": ""}
    proc = daemon.run("show", "kept", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "pending"
    pid = int((daemon.home / "queuectld.pid").read_text())
    assert daemon.run("shutdown", env=env).returncode == 0
    wait_for(lambda: not pid_alive(pid), timeout=20, what="the autostarted daemon to exit")
