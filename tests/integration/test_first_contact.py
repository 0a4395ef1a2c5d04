"""A newcomer's first hour (issue 14): racing first commands, a drain, no tracebacks.

Each test goes through the real ``queuectl``/``queuectld`` commands and fails without
the fix it is named after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DaemonFactory
from tests.harness import QueueDaemon, pid_alive, queuectl_command, tagged_pids, wait_for

pytestmark = pytest.mark.timeout(120)

AUTOSTART = {"QUEUECTL_NO_AUTOSTART": ""}
NO_DAC = "-dac_override,-dac_read_search"


def run_parallel(home: QueueDaemon, argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    """Start every ``queuectl ARGV`` at once (autostart on); their exit codes and output."""
    procs = [
        subprocess.Popen(
            [*queuectl_command(), *argv],
            env=home.cli_env(AUTOSTART),
            cwd=home.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out, err))
    return results


def stop_autostarted(home: QueueDaemon) -> None:
    home.run("shutdown", env=AUTOSTART)
    wait_for(lambda: not tagged_pids(home.tag), timeout=30, what="the daemon to exit")


def test_parallel_first_enqueues_all_store_their_job(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    results = run_parallel(home, [["enqueue", "--", "echo", f"race{i}"] for i in range(6)])
    assert [code for code, _, _ in results] == [0] * 6, results
    listed = json.loads(home.cli("list", "--json"))
    assert sorted(j["command"] for j in listed) == [f"echo race{i}" for i in range(6)]
    # One daemon won; the others connected to it.
    assert len(set(tagged_pids(home.tag))) == 1
    stop_autostarted(home)


def test_parallel_first_status_calls_all_succeed(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    results = run_parallel(home, [["status"]] * 3)
    assert [code for code, _, _ in results] == [0] * 3, results
    assert all("workers:" in out for _, out, _ in results)
    stop_autostarted(home)


def hold_a_job(daemon: QueueDaemon, tmp_path: Path) -> Path:
    """A running job that ends once the returned file exists (the drain waits for it)."""
    release = tmp_path / "release"
    daemon.cli("enqueue", "--id", "held", "--", f"while [ ! -e {release} ]; do sleep 0.05; done")
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("held", "processing")
    return release


def test_commands_during_a_drain_say_so(daemon: QueueDaemon, tmp_path: Path) -> None:
    release = hold_a_job(daemon, tmp_path)
    assert daemon.cli("shutdown").strip() == "queuectld is shutting down"
    status = daemon.cli_json("status")
    assert status["draining"] is True and status["counts"]["processing"] == 1
    assert "draining" in daemon.cli("status")
    for argv in (["enqueue", "--", "true"], ["enqueue", '{"command":"true"}'], ["list"]):
        proc = daemon.run(*argv)
        assert proc.returncode == 1, proc
        assert proc.stderr == "queuectl: queuectld is shutting down; 1 job still running\n"
    release.touch()
    assert daemon.proc is not None and daemon.proc.wait(30) == 0
    daemon.proc = None
    daemon.start()
    assert daemon.job("held")["state"] == "completed"


def test_shutdown_then_enqueue_starts_a_new_daemon(daemon: QueueDaemon, tmp_path: Path) -> None:
    release = hold_a_job(daemon, tmp_path)
    old = daemon.pid
    daemon.cli("shutdown")
    enqueue = subprocess.Popen(
        [*queuectl_command(), "enqueue", "--id", "after", "--", "true"],
        env=daemon.cli_env(AUTOSTART),
        cwd=daemon.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        lambda: any(e.get("event") == "request_refused" for e in daemon.log_events()),
        what="the draining daemon to refuse the enqueue",
    )
    assert enqueue.poll() is None  # it waits for the old daemon to exit...
    release.touch()  # ...which it does once the held job ends; then a new one starts
    out, err = enqueue.communicate(timeout=90)
    assert enqueue.returncode == 0, err
    assert out == "enqueued job after: true\n"
    assert daemon.proc is not None and daemon.proc.wait(30) == 0
    new = int((daemon.home / "queuectld.pid").read_text())
    assert new != old and pid_alive(new)
    listed = {j["id"]: j["state"] for j in json.loads(daemon.cli("list", "--json"))}
    assert listed["held"] == "completed" and "after" in listed
    daemon.proc = None
    stop_autostarted(daemon)


# -- no traceback anywhere ----------------------------------------------------------


def one_sentence(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc
    assert "Traceback" not in proc.stderr
    # Usage errors (2) come in click's form: usage, a hint, then the one-sentence error.
    last = proc.stderr.strip().splitlines()[-1]
    usage = code == 2 and proc.stderr.startswith("Usage: ") and last.startswith("Error: ")
    assert usage or proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize("fast", [True, False], ids=["enqueue", "status"])
def test_home_that_is_a_file(daemon_factory: DaemonFactory, fast: bool) -> None:
    home = daemon_factory(start=False)
    afile = home.home / "file"
    afile.write_text("")
    argv = ["enqueue", "--", "true"] if fast else ["status"]
    proc = home.run(*argv, env={**AUTOSTART, "QUEUECTL_HOME": str(afile)})
    one_sentence(proc, 1, "not a directory")


def test_home_that_cannot_be_created(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    proc = home.run("enqueue", "--", "true", env={**AUTOSTART, "QUEUECTL_HOME": "/proc/x"})
    one_sentence(proc, 1, "/proc/x")


def test_daemon_home_that_cannot_be_created() -> None:
    queuectld = Path(sys.executable).with_name("queuectld")
    proc = subprocess.run(
        [str(queuectld), "--home", "/proc/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    one_sentence(proc, 2, "/proc/x")


def test_socket_path_too_long(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    deep = home.home / ("d" * 100)
    for argv in (["enqueue", "--", "true"], ["status"]):
        proc = home.run(*argv, env={**AUTOSTART, "QUEUECTL_HOME": str(deep)})
        one_sentence(proc, 1, "over the 107-byte limit")


def test_integers_beyond_64_bits(daemon: QueueDaemon) -> None:
    proc = daemon.run("list", "--offset", "18446744073709551616")
    one_sentence(proc, 2, "--offset")
    proc = daemon.run("enqueue", '{"command":"true","max_retries":99999999999999999999999}')
    one_sentence(proc, 1, "64 bits")
    assert daemon.cli_json("list") == []


def test_socket_directory_out_of_reach(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    locked = home.home / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0)
    # root passes any mode: drop the capabilities that let it (as a plain user would be).
    as_user = [] if os.getuid() else ["setpriv", f"--inh-caps={NO_DAC}", f"--bounding-set={NO_DAC}"]
    env = home.cli_env({**AUTOSTART, "QUEUECTL_HOME": str(locked / "inner")})
    try:
        for argv in (["status"], ["enqueue", "--", "true"]):
            proc = subprocess.run(
                [*as_user, *queuectl_command(), *argv],
                env=env,
                cwd="/",
                capture_output=True,
                text=True,
                timeout=30,
            )
            one_sentence(proc, 1, "permission denied")
    finally:
        locked.chmod(0o700)


def test_daemon_flag_beside_a_running_daemon(daemon: QueueDaemon) -> None:
    queuectld = Path(sys.executable).with_name("queuectld")
    proc = subprocess.run(
        [str(queuectld), "--daemon", "--home", str(daemon.home)],
        env=daemon.daemon_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    one_sentence(proc, 1, "another queuectld is using", str(daemon.database))
    assert daemon.running() and daemon.cli_json("status")["draining"] is False
