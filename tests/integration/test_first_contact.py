"""A newcomer's first hour (issue 14): racing first commands, a drain, no tracebacks.

Each test goes through the real ``queuectl``/``queuectld`` commands and fails without
the fix it is named after.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
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
    # A second `shutdown` changes nothing: the running job is not stopped.
    again = daemon.run("shutdown")
    assert again.returncode == 0
    assert again.stdout == "queuectld is shutting down; 1 job still running\n"
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
            # One sentence naming the directory out of reach and what to do (issue 13).
            one_sentence(proc, 1, "permission denied", str(locked / "inner"), "QUEUECTL_HOME")
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
    # SQLite: the database file; PostgreSQL (shared by daemons): this daemon's home.
    one_sentence(proc, 1, "another queuectld is using", str(daemon.home))
    assert daemon.running() and daemon.cli_json("status")["draining"] is False


# -- JSON jobs, commands as they run ---------------------------------------------------


def test_several_json_jobs_are_stored_together_or_not_at_all(daemon: QueueDaemon) -> None:
    x7, x8 = '{"id":"x7","command":"echo 7"}', '{"id":"x8","command":"echo 8"}'
    assert daemon.cli("enqueue", x7, x8) == "enqueued 2 jobs: x7, x8\n"
    listed = {j["id"]: j["command"] for j in daemon.cli_json("list")}
    assert listed == {"x7": "echo 7", "x8": "echo 8"}
    # One refused job (a duplicate id) and neither is stored.
    proc = daemon.run("enqueue", '{"id":"x9","command":"true"}', x8)
    one_sentence(proc, 1, "x8")
    # JSON is never turned into a shell command.
    for argv in ([x7, "echo"], [x7, "{not json"], ["--id", "y", x7, x8]):
        proc = daemon.run("enqueue", *argv)
        one_sentence(proc, 2)
    assert [j["id"] for j in daemon.cli_json("list")] == ["x7", "x8"]


def test_list_shows_the_command_as_it_will_run(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "spaced", "--", 'echo "hello   world"')
    daemon.cli("enqueue", "--id", "long", "--", "echo " + "x" * 200)
    daemon.cli("enqueue", "--id", "lines", "--", "echo a\necho b")
    listing = daemon.cli("list")
    assert 'echo "hello   world"' in listing
    assert "echo a\\necho b" in listing  # one row per job: control characters escaped
    assert "x" * 200 not in listing and "…" in listing
    assert "echo " + "x" * 200 in daemon.cli("list", "--wide")


def test_tables_fit_80_columns(daemon: QueueDaemon) -> None:
    daemon.cli("config", "set", "max-retries", "0")
    daemon.cli("enqueue", "--id", "a-rather-long-job-identifier", "--", "echo " + "y" * 150)
    daemon.cli("enqueue", "--id", "bad", "--", "echo " + "z" * 150 + "; exit 3")
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("bad", "dead")
    for argv in (["list"], ["show", "bad"], ["config", "list"], ["dlq", "list"], ["status"]):
        out = daemon.cli(*argv)
        lines = out.splitlines()
        if argv[0] == "show":
            lines = [line for line in lines if not line.startswith("command:")]
        assert max(len(line) for line in lines) <= 80, out
    assert max(len(line) for line in daemon.cli("list", "--wide").splitlines()) > 80


def test_times_are_local_with_the_zone(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "t", "--", "true")
    env = {"TZ": "Asia/Kolkata"}
    assert "updated IST" in daemon.run("list", env=env).stdout
    shown = daemon.run("show", "t", env=env).stdout
    assert re.search(r"^created: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d IST$", shown, re.M), shown


# -- numbers ---------------------------------------------------------------------------


def test_numbers_read_as_people_mean_them(daemon: QueueDaemon) -> None:
    proc = daemon.run("config", "set", "max-retries", "-1")
    one_sentence(proc, 1, "max-retries must be between 0 and 1000, not -1")
    one_sentence(daemon.run("config", "set", "max-retries", "1_0"), 1, "'1_0'")
    proc = daemon.run("enqueue", '{"command":"true","max_retries":5000}')
    one_sentence(proc, 1, "between 0 and 1000, not 5000")
    proc = daemon.run("list", "--offset", "4611686018427387905")
    one_sentence(proc, 2)
    assert "e+" not in proc.stderr
    for flag in ("--max-retries", "--timeout", "--delay"):
        one_sentence(daemon.run("enqueue", flag, "1_0", "--", "true"), 2, flag)
    assert daemon.cli_json("config", "get", "max-retries")["value"] == 3
    assert daemon.cli_json("list") == []


# -- small things ------------------------------------------------------------------------


def test_shutdown_without_a_daemon_starts_none(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    proc = home.run("shutdown", env=AUTOSTART)
    assert proc.returncode == 0 and proc.stdout == "queuectld is not running\n", proc
    assert tagged_pids(home.tag) == [] and os.listdir(home.home) == []


def test_no_autostart_error_names_what_turned_it_off(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    flag = home.run("--no-autostart", "status", env=AUTOSTART)
    one_sentence(flag, 1, "--no-autostart")
    assert "QUEUECTL_NO_AUTOSTART" not in flag.stderr
    env = home.run("status")  # the harness sets QUEUECTL_NO_AUTOSTART=1
    one_sentence(env, 1, "QUEUECTL_NO_AUTOSTART")
    assert "--no-autostart" not in env.stderr


def test_logs_and_watch_speak_json(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "j", "--", "echo out")
    proc = daemon.run("logs", "j")
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr == "queuectl: job j is pending; no attempt has finished yet\n"
    assert daemon.cli_json("logs", "j") == {"id": "j", "log": ""}
    daemon.cli("worker", "start", "--count", "1")
    lines = daemon.cli("watch", "--until-idle", "--json").splitlines()
    events = [json.loads(line) for line in lines]
    assert events[-1]["type"] == "idle" and all("time" in e for e in events)
    daemon.wait_for_state("j", "completed")
    log = daemon.cli_json("logs", "j")
    assert log["id"] == "j" and "out\n" in log["log"]


def test_watch_ends_cleanly_when_the_daemon_stops(daemon: QueueDaemon) -> None:
    watch = subprocess.Popen(
        [*queuectl_command(), "watch"],
        env=daemon.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    # Enqueue until the watcher (subscribed at some point) prints the event of one.
    while not select.select([watch.stdout], [], [], 0.2)[0]:
        daemon.cli("enqueue", "--", "true")
    assert "[INFO]" in watch.stdout.readline()
    daemon.cli("shutdown")
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert out.splitlines()[-1].endswith("[INFO] queuectld stopped") and err == ""


def test_dlq_retry_several_and_all(daemon: QueueDaemon) -> None:
    daemon.cli("config", "set", "max-retries", "0")
    for job_id in ("d1", "d2", "d3"):
        daemon.cli("enqueue", "--id", job_id, "--", "exit 1")
    daemon.cli("worker", "start", "--count", "1")
    for job_id in ("d1", "d2", "d3"):
        daemon.wait_for_state(job_id, "dead")
    daemon.cli("worker", "stop")
    out = daemon.cli("dlq", "retry", "d1", "d2")
    assert out == "job d1 moved from the DLQ to pending\njob d2 moved from the DLQ to pending\n"
    proc = daemon.run("dlq", "retry", "d1", "d3")  # d1 is no longer dead; d3 still goes back
    assert proc.returncode == 1 and "d1" in proc.stderr and "job d3 moved" in proc.stdout
    assert daemon.cli("dlq", "retry", "--all") == "the DLQ is empty\n"
    one_sentence(daemon.run("dlq", "retry"), 2)
    assert {j["state"] for j in daemon.cli_json("list")} == {"pending"}


def test_help_says_defaults_limits_and_keys(daemon_factory: DaemonFactory) -> None:
    home = daemon_factory(start=False)
    enqueue = home.cli("enqueue", "--help")
    assert "64 KiB" in enqueue
    assert "default-timeout, 10" in enqueue and "max-retries, 3" in enqueue
    config = home.cli("config", "--help")
    for key in ("max-retries", "backoff-base", "backoff-max", "default-timeout"):
        assert key in config
    assert "max-retries        retries after the first failure before the DLQ (3)" in config
    assert "--attach" in home.cli("worker", "start", "--help")


# -- the seed's foreground workers -----------------------------------------------------


def test_attach_runs_workers_until_the_queue_is_drained(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", '{"id":"job1","command":"echo Job 1 executed"}')
    daemon.cli("enqueue", '{"id":"job2","command":"echo Job 2 executed"}')
    out = daemon.cli("worker", "start", "--count", "2", "--attach")
    lines = out.splitlines()
    assert lines[0] == "workers: 2 desired"
    assert "[INFO] [job1] processing -> `echo Job 1 executed` (attempt 1)" in lines
    assert "[INFO] [job2] completed ✔" in lines
    assert lines[-1] == "workers: back to 0 desired"
    assert daemon.status()["workers"]["desired"] == 0
    # Persistent workers set before are what it goes back to.
    daemon.cli("worker", "start", "--count", "1")
    daemon.cli("enqueue", "--", "true")
    out = daemon.cli("worker", "start", "--count", "3", "--attach")
    assert out.splitlines()[-1] == "workers: back to 1 desired"


def test_attach_ctrl_c_sets_the_workers_back(daemon: QueueDaemon, tmp_path: Path) -> None:
    release = tmp_path / "release"
    daemon.cli("enqueue", "--id", "slow", "--", f"while [ ! -e {release} ]; do sleep 0.05; done")
    attach = subprocess.Popen(
        [*queuectl_command(), "worker", "start", "--count", "2", "--attach"],
        env=daemon.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert attach.stdout is not None
    assert attach.stdout.readline() == "workers: 2 desired\n"
    assert "[INFO] [slow] processing" in attach.stdout.readline()
    attach.send_signal(signal.SIGINT)
    out, _ = attach.communicate(timeout=30)
    assert attach.returncode == 130
    assert out.splitlines()[-1] == "workers: back to 0 desired"
    assert daemon.status()["workers"]["desired"] == 0
    release.touch()  # the running job finishes (graceful), nothing new starts
    assert daemon.wait_for_state("slow", "completed")["state"] == "completed"


def test_fast_status_answers_as_click_does(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--", "true")
    click_path = [sys.executable, "-m", "queuectl.cli"]
    for argv in (["status"], ["status", "--json"]):
        fast = daemon.run(*argv)
        full = subprocess.run(
            [*click_path, *argv], env=daemon.cli_env(), capture_output=True, text=True, check=False
        )
        assert (fast.returncode, fast.stdout, fast.stderr) == (0, full.stdout, full.stderr)


def test_daemon_errors_on_a_terminal_read_as_text(daemon: QueueDaemon) -> None:
    import pty

    queuectld = Path(sys.executable).with_name("queuectld")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [str(queuectld), "--home", str(daemon.home)],
            env=daemon.daemon_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=30,
            check=False,
        )
        os.close(follower)
        follower = -1
        out = b""
        while select.select([leader], [], [], 0)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = out.decode()
    assert proc.returncode == 1
    assert "another queuectld is using" in text and not text.lstrip().startswith("{"), text


def test_list_newest_first(daemon: QueueDaemon) -> None:
    for job_id in ("a", "b", "c"):
        daemon.cli("enqueue", "--id", job_id, "--", "true")

    def ids(*flags: str) -> list[str]:
        return [j["id"] for j in daemon.cli_json("list", "--newest", *flags)]

    assert ids() == ["c", "b", "a"]
    assert ids("--limit", "2") == ["c", "b"]
    assert ids("--offset", "1", "--limit", "5") == ["b", "a"]
    assert ids("--offset", "3") == []
    assert daemon.cli("list", "--newest").splitlines()[2].startswith("c ")
