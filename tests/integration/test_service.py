"""queuectld as a service (issue 5): sd_notify, socket activation, drain, reload, logs.

Every test runs real ``queuectld`` processes, each with its own home under /tmp, and
plays systemd's part itself: a NOTIFY_SOCKET datagram socket it reads, a listening
socket handed over as fd 3 with LISTEN_FDS/LISTEN_PID, JOURNAL_STREAM, signals.
The fixtures are local on purpose (custom environments); see tests/conftest.py for
the shared ``daemon`` fixture.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl import Client
from queuectl.errors import QueuectlError

# Measured stop durations (SIGTERM -> exit), printed at the end of the drain tests.
TIMINGS: dict[str, float] = {}
PRIVATE = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
)
TAG = "QUEUECTL_SVC_TEST"


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    """True if a live (not zombie) process is in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are not fd 3 (where systemd puts a socket), nor near it."""
    low = os.pipe()
    high = (fcntl.fcntl(low[0], fcntl.F_DUPFD_CLOEXEC, 20), fcntl.fcntl(low[1], fcntl.F_DUPFD, 20))
    os.close(low[0])
    os.close(low[1])
    return high


# systemd's part of socket activation, in the child: the socket at fd 3 and LISTEN_PID
# set to the pid that then execs queuectld (the same pid).
ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = os.environ.get('LISTEN_PID') or str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Service:
    """One foreground queuectld in its own home; systemd's side is up to the test."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.socket = home / "queuectld.sock"
        self.config = home / "queuectld.toml"
        self.stderr_path = home / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("QUEUECTL_", "QUEUECTLD_")) and k not in PRIVATE
        }
        env[TAG] = str(self.home)
        env.update(extra or {})
        return env

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        config: str | None = None,
        wrap: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
        preexec: Callable[[], None] | None = None,
        stderr: int | None = None,
    ) -> subprocess.Popen[bytes]:
        if config is not None:
            self.config.write_text(config)
        read_fd, write_fd = _high_pipe()
        argv = [sys.executable, "-m", "queuectld", "--home", str(self.home)]
        if self.config.exists():
            argv += ["--config", str(self.config)]
        argv += [*args, "--ready-fd", str(write_fd)]
        err = stderr if stderr is not None else open(self.stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*(wrap or []), *argv],
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            pass_fds=(write_fd, *pass_fds),
            preexec_fn=preexec,
        )
        os.close(write_fd)
        if stderr is None:
            err.close()  # type: ignore[union-attr]
        self.starts += 1
        with os.fdopen(read_fd, "rb") as ready:
            if wait:
                line = ready.read()
                if b"READY" not in line:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError(f"queuectld did not start:\n{self.stderr()[-3000:]}")
        return self.proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, float]:
        """Signal the daemon; return its exit status and seconds from signal to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def client(self) -> Client:
        return Client.connect(str(self.socket), autostart=False, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.get_job(job_id))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr().splitlines():
            line = re.sub(r"^<\d>", "", line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def event(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # Whatever the daemon started (workers, jobs) carries our tag: end it.
        needle = f"{TAG}={self.home}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def svc() -> Iterator[Service]:
    home = Path(tempfile.mkdtemp(prefix="qc-svc-", dir="/tmp"))
    service = Service(home)
    try:
        yield service
    finally:
        service.cleanup()
        shutil.rmtree(home, ignore_errors=True)


class NotifyListener:
    """The systemd side of sd_notify: an AF_UNIX datagram socket, messages timestamped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()

    def lines(self) -> list[tuple[float, str]]:
        """Each ``KEY=value`` line with its arrival time."""
        return [(t, line) for t, msg in list(self.messages) for line in msg.split("\n")]

    def first(self, prefix: str) -> float:
        return next(t for t, line in self.lines() if line.startswith(prefix))

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for _, line in self.lines())


# -- sd_notify ---------------------------------------------------------------------


def test_notify_ready_status_watchdog_stopping_in_order(svc: Service) -> None:
    listener = NotifyListener(svc.home / "notify.sock")
    out = svc.home / "out"
    out.mkdir()
    try:
        env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"}
        svc.start("--workers", "1", env=env)
        wait_for(lambda: listener.has("READY=1"), what="READY=1")
        with svc.client() as c:
            c.enqueue(f"env > {out}/env.txt; sleep 1.5", id="slow", cwd=str(out))
            for i in range(3):
                c.enqueue("true", id=f"q{i}")
        wait_for(
            lambda: listener.has("STATUS=1/1 workers, 3 pending, 1 running"),
            what="a STATUS with the live counts",
        )
        wait_for(lambda: svc.job("q2")["state"] == "completed", what="the queue to run")
        wait_for(lambda: listener.has("STATUS=1/1 workers, 0 pending, 0 running"), what="idle")
        time.sleep(0.5)  # watchdog pings while idle, too
        code, _ = svc.stop()
    finally:
        listener.close()
    assert code == 0
    lines = listener.lines()
    keys = [line.split("=", 1)[0] for _, line in lines]
    # READY comes first: the socket listens and the store is open before it is sent.
    assert keys[0] == "READY"
    ready, stopping = listener.first("READY=1"), listener.first("STOPPING=1")
    statuses = [(t, line) for t, line in lines if line.startswith("STATUS=")]
    counted = [t for t, line in statuses if re.match(r"STATUS=\d+/\d+ workers, \d+ pending", line)]
    assert counted and ready <= min(counted) and max(counted) < stopping
    # STATUS is rate-limited: not one per job event.
    assert len(counted) <= (stopping - ready) / 0.9 + 2
    pings = [t for t, line in lines if line == "WATCHDOG=1"]
    assert pings and ready <= pings[0] < stopping
    during = [t for t in pings if t <= stopping]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    # Half of WATCHDOG_USEC (0.1 s) apart; never as late as WATCHDOG_USEC itself.
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.1, abs=0.03)
    assert max(gaps) < 0.2, f"a watchdog ping came {max(gaps):.3f}s after the previous one"
    # After STOPPING: the drain extends systemd's stop timeout.
    assert listener.first("EXTEND_TIMEOUT_USEC=") >= stopping
    assert keys.index("STOPPING") > keys.index("READY")
    # Nothing of systemd's reached the job.
    job_env = (out / "env.txt").read_text()
    for name in PRIVATE:
        assert f"{name}=" not in job_env


def test_watchdog_pings_stop_while_the_store_thread_is_wedged(svc: Service) -> None:
    listener = NotifyListener(svc.home / "notify.sock")
    try:
        env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"}
        svc.start("--workers", "0", env=env)
        wait_for(lambda: listener.has("WATCHDOG=1"), what="a first ping")

        def last_ping() -> float:
            return max(t for t, line in listener.lines() if line == "WATCHDOG=1")

        # Another process takes SQLite's write lock: the store thread's next transaction
        # (the watchdog's own probe) waits in the busy handler, up to its 5 s.
        db = sqlite3.connect(svc.home / "queue.db", isolation_level=None, timeout=10)
        db.execute("BEGIN IMMEDIATE")
        locked = time.monotonic()
        # No ping for three intervals (systemd would restart after two), while the event
        # loop itself still answers a new connection's hello.
        wait_for(lambda: time.monotonic() - last_ping() > 0.3, timeout=3, what="pings to stop")
        assert last_ping() < locked + 0.25
        with Client.connect(str(svc.socket), autostart=False, timeout=2):
            pass
        db.execute("ROLLBACK")
        released = time.monotonic()
        wait_for(lambda: last_ping() > released, timeout=3, what="pings to resume")
        db.close()
        code, _ = svc.stop()
    finally:
        listener.close()
    assert code == 0


def test_watchdog_is_not_pinged_for_another_pid(svc: Service) -> None:
    listener = NotifyListener(svc.home / "notify.sock")
    try:
        env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000"}
        svc.start(env={**env, "WATCHDOG_PID": "1"})
        time.sleep(0.5)
        code, _ = svc.stop()
    finally:
        listener.close()
    assert code == 0
    assert listener.has("READY=1") and listener.has("STOPPING=1")
    assert not listener.has("WATCHDOG=1")


# -- socket activation -------------------------------------------------------------


def _activated_start(svc: Service, listener: socket.socket, listen_pid: str = "") -> None:
    """Start queuectld as systemd would: the listening socket as fd 3, LISTEN_* set."""
    fd = listener.fileno()
    env = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "queuectld.socket"}
    if listen_pid:
        env["LISTEN_PID"] = listen_pid
    svc.start(
        "--socket",
        listener.getsockname(),
        env=env,
        wrap=[sys.executable, "-c", ACTIVATE, str(fd)],
        pass_fds=(fd,),
    )


def test_socket_activation(svc: Service) -> None:
    path = str(svc.home / "activated.sock")
    svc.socket = Path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    out = svc.home / "out"
    out.mkdir()
    try:
        _activated_start(svc, listener)
        (ready,) = svc.event("daemon_ready")
        assert ready["activated"] is True and ready["socket"] == path
        with Client.connect(path, autostart=False) as c:
            c.set_workers(1)
            c.enqueue(f"env > {out}/env; ls -l /proc/self/fd > {out}/fds", id="j", cwd=str(out))
        wait_for(lambda: svc.job("j")["state"] == "completed", what="the job")
        code, _ = svc.stop()
        assert code == 0
        # The socket is systemd's: the daemon neither unlinked nor shut it down, so a
        # client connecting now waits in the backlog for the next daemon.
        assert os.path.exists(path)
        answers: list[Any] = []

        def ping() -> None:
            try:
                with Client.connect(path, autostart=False, timeout=30) as c:
                    answers.append(c.ping())
            except (QueuectlError, OSError) as exc:
                answers.append(exc)

        waiting = threading.Thread(target=ping)
        waiting.start()
        time.sleep(0.3)
        assert not answers  # connected, waiting for a daemon
        _activated_start(svc, listener)
        waiting.join(30)
        assert answers and isinstance(answers[0], dict) and answers[0]["pong"]
        assert svc.stop()[0] == 0
    finally:
        listener.close()
    assert "LISTEN_" not in (out / "env").read_text()
    assert "socket:" not in (out / "fds").read_text()


def test_listen_fds_for_another_pid_are_ignored(svc: Service) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(svc.home / "other.sock"))
    listener.listen(1)
    try:
        fd = listener.fileno()
        svc.start(
            env={"LISTEN_FDS": "1", "LISTEN_PID": "1"},
            wrap=[sys.executable, "-c", ACTIVATE, str(fd)],
            pass_fds=(fd,),
        )
        (ready,) = svc.event("daemon_ready")
        assert ready["activated"] is False and ready["socket"] == str(svc.socket)
        assert svc.stop()[0] == 0
    finally:
        listener.close()


# -- SIGTERM drain -----------------------------------------------------------------


def _two_running_jobs(svc: Service, out: Path, seconds: float) -> None:
    """Two jobs of ``seconds``, each with a grandchild, both running when this returns."""
    with svc.client() as c:
        for name in ("a", "b"):
            command = (
                f"echo $$ > {out}/{name}.pgid; "
                f"(sleep {seconds}; echo late > {out}/{name}.late) & "
                f"echo $! > {out}/{name}.child; wait; echo done > {out}/{name}.done"
            )
            c.enqueue(command, id=name, cwd=str(out), timeout=60)
    wait_for(
        lambda: all((out / f"{n}.child").exists() for n in ("a", "b")), what="both jobs to run"
    )


def test_sigterm_lets_running_jobs_finish_within_the_deadline(svc: Service) -> None:
    out = svc.home / "out"
    out.mkdir()
    svc.start("--workers", "2", config="drain_timeout = 10\n")
    _two_running_jobs(svc, out, 3)
    started = time.monotonic()
    code, took = svc.stop()
    TIMINGS["drain_timeout=10, two 3 s jobs"] = took
    print(f"\nSIGTERM -> exit with drain_timeout=10 and two 3 s jobs: {took:.2f}s")
    assert code == 0
    assert took < 10
    assert (out / "a.done").exists() and (out / "b.done").exists()
    assert time.monotonic() - started >= 2.0  # it did wait for them
    svc.start("--workers", "0")
    for name in ("a", "b"):
        job = svc.job(name)
        assert job["state"] == "completed"
        assert job["attempts"] == 1 and job["interruptions"] == 0
    with svc.client() as c:
        assert c.status()["counts"]["processing"] == 0
    (drained,) = svc.event("drain_started")[:1]
    assert drained["running"] == 2


def test_sigterm_past_the_deadline_requeues_without_charging_an_attempt(svc: Service) -> None:
    out = svc.home / "out"
    out.mkdir()
    svc.start("--workers", "2", config="drain_timeout = 1\nkill_grace = 2\n")
    _two_running_jobs(svc, out, 3)
    code, took = svc.stop()
    TIMINGS["drain_timeout=1, two 3 s jobs"] = took
    print(f"\nSIGTERM -> exit with drain_timeout=1 and two 3 s jobs: {took:.2f}s")
    assert code == 0
    assert 1.0 <= took < 3.0
    for name in ("a", "b"):
        # Stopped with their whole process group: the grandchild too.
        assert not group_alive(int((out / f"{name}.pgid").read_text()))
        assert not alive(int((out / f"{name}.child").read_text()))
        assert not (out / f"{name}.done").exists()
    assert svc.event("drain_deadline_passed")[0]["requeued"] == 2
    time.sleep(2.5)
    assert not (out / "a.late").exists() and not (out / "b.late").exists()

    svc.start("--workers", "0")
    for name in ("a", "b"):
        job = svc.job(name)
        assert job["state"] == "pending", job
        assert job["attempts"] == 0  # an interruption is not an attempt...
        assert job["interruptions"] == 1  # ...it is counted on its own (by design)
    with svc.client() as c:
        assert c.status()["counts"]["processing"] == 0
        c.set_workers(2)  # the next start runs them
    for name in ("a", "b"):

        def done(n: str = name) -> bool:
            return bool(svc.job(n)["state"] == "completed")

        wait_for(done, what=f"job {name} to rerun")
        assert svc.job(name)["attempts"] == 1
    assert (out / "a.done").exists() and (out / "b.done").exists()
    assert svc.stop()[0] == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_at_once(svc: Service, second: int) -> None:
    out = svc.home / "out"
    out.mkdir()
    svc.start("--workers", "2", config="drain_timeout = 60\nkill_grace = 1\n")
    _two_running_jobs(svc, out, 30)
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: svc.event("drain_started"), what="the drain to start")
    code, took = svc.stop(second)
    print(f"\nsecond signal -> exit: {took:.2f}s")
    assert code == 0
    assert took < 1 + 3  # kill_grace + stopping the workers
    assert svc.event("stop_now")
    svc.start("--workers", "0")
    for name in ("a", "b"):
        job = svc.job(name)
        assert (job["state"], job["attempts"]) == ("pending", 0)
    assert svc.stop()[0] == 0


# -- SIGHUP reload -----------------------------------------------------------------


def _workers(svc: Service) -> dict[str, int]:
    with svc.client() as c:
        return dict(c.status()["workers"])


def test_sighup_applies_a_new_worker_count_without_dropping_anything(svc: Service) -> None:
    out = svc.home / "out"
    out.mkdir()
    svc.start(config="workers = 1\ndrain_timeout = 20\n")
    assert svc.proc is not None
    wait_for(lambda: _workers(svc)["running"] == 1, what="one worker")
    held = svc.client()  # a connection open across the reload
    try:
        held.enqueue(f"sleep 1; echo ok > {out}/long", id="long", cwd=str(out))
        wait_for(lambda: svc.job("long")["state"] == "processing", what="the job to run")
        svc.config.write_text("workers = 3\ndrain_timeout = 5\nlog_level = 'debug'\n")
        svc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _workers(svc) == {"desired": 3, "running": 3, "busy": 1}, what="3")
        assert held.ping()["pong"]  # the connection survived
        wait_for(lambda: svc.job("long")["state"] == "completed", what="the job to finish")
        assert svc.job("long")["interruptions"] == 0
    finally:
        held.close()
    (reloaded,) = svc.event("config_reloaded")
    assert set(reloaded["changed"]) == {"workers", "drain_timeout", "log_level"}
    assert svc.event("executor_spawned")  # debug logging is on now

    # A count set at run time (`queuectl worker start`) wins over the file.
    with svc.client() as c:
        c.set_workers(2)
    svc.config.write_text("workers = 4\n")
    svc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: svc.event("workers_not_reloaded"), what="the refusal to be logged")
    assert _workers(svc)["desired"] == 2
    assert svc.stop()[0] == 0


@pytest.mark.parametrize(
    ("broken", "where"),
    [
        ("workers = 2\nworkers = [\n", ":2:"),
        ("workers = 'two'\n", ":1: workers must be an integer"),
        ("workers = 2\nwokers = 3\n", ":2: unknown key 'wokers'"),
        ("workers = 2\nlog_dir = 'relative/logs'\n", ":2: log_dir must be an absolute path"),
    ],
)
def test_sighup_with_an_invalid_file_keeps_the_running_configuration(
    svc: Service, broken: str, where: str
) -> None:
    svc.start(config="workers = 1\n")
    assert svc.proc is not None
    wait_for(lambda: _workers(svc)["running"] == 1, what="one worker")
    svc.config.write_text(broken)
    svc.proc.send_signal(signal.SIGHUP)
    (failed,) = wait_for(lambda: svc.event("config_reload_failed"), what="the rejection")
    assert failed["level"] == "error"
    assert any(where in p and str(svc.config) in p for p in failed["problems"]), failed
    assert _workers(svc) == {"desired": 1, "running": 1, "busy": 0}
    with svc.client() as c:
        c.enqueue("true", id="still")
    wait_for(lambda: svc.job("still")["state"] == "completed", what="the queue to work")
    svc.config.write_text("workers = 2\n")  # fixed: the next reload applies
    svc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _workers(svc)["running"] == 2, what="two workers")
    assert svc.stop()[0] == 0


def test_sighup_reopens_the_log_file(svc: Service) -> None:
    log_file = svc.home / "queuectld.log"
    svc.start(config=f"log_file = '{log_file}'\nworkers = 1\n")
    assert svc.proc is not None
    wait_for(lambda: log_file.exists() and "daemon_ready" in log_file.read_text(), what="log")
    log_file.rename(svc.home / "queuectld.log.1")  # logrotate
    svc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_file.exists() and "config_reloaded" in log_file.read_text(), what="it")
    assert svc.stop()[0] == 0
    assert "daemon_stopped" in log_file.read_text()


# -- configuration -----------------------------------------------------------------


def _queuectld(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUECTL", "QUEUECTLD_"))}
    return subprocess.run(
        [sys.executable, "-m", "queuectld", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_reports_each_problem_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "# queuectld\n"
        "workers = 2\n"
        "wokers = 3\n"
        "drain_timeout = 'long'\n"
        "log_dir = 'logs'\n"
        f"database = '{tmp_path}/a-file/queue.db'\n"
        "log_level = 'loud'\n"
    )
    result = _queuectld("--check-config", "--config", str(bad), "--home", str(tmp_path))
    assert result.returncode == 2
    err = result.stderr
    assert f"{bad}:3: unknown key 'wokers' (did you mean 'workers'?)" in err
    assert f"{bad}:4: drain_timeout must be a number, not a string ('long')" in err
    assert f"{bad}:5: log_dir must be an absolute path" in err
    assert f"{bad}:6: database: {tmp_path}/a-file is not a directory" in err
    assert f"{bad}:7: log_level must be one of debug, info, warning, error, not 'loud'" in err
    assert "configuration NOT OK" in err

    broken = tmp_path / "broken.toml"
    broken.write_text("workers = 2\n\nlog_level = 'info\n")
    result = _queuectld("--check-config", "--config", str(broken))
    assert result.returncode == 2
    assert f"{broken}:3:" in result.stderr

    result = _queuectld("--check-config", "--home", str(tmp_path), env={"QUEUECTLD_WORKERS": "x"})
    assert result.returncode == 2
    assert "environment QUEUECTLD_WORKERS: workers must be an integer, not 'x'" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text("workers = 2\ndrain_timeout = 12.5\n")
    result = _queuectld("--check-config", "--config", str(good), "--home", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_print_config_is_toml_with_sources_and_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("workers = 2\nkill_grace = 3\nlog_level = 'warning'\n")
    result = _queuectld(
        "--print-config",
        "--config",
        str(conf),
        "--home",
        str(tmp_path),
        "--log-level",
        "debug",
        env={"QUEUECTLD_KILL_GRACE": "4", "QUEUECTLD_LOG_LEVEL": "error"},
    )
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["workers"] == 2  # file
    assert printed["kill_grace"] == 4.0  # environment beats file
    assert printed["log_level"] == "debug"  # flag beats environment
    assert printed["drain_timeout"] == 30.0  # default
    assert printed["database"] == f"{tmp_path}/queue.db"
    assert f"workers = 2  # {conf}:1" in result.stdout
    assert "kill_grace = 4.0  # environment QUEUECTLD_KILL_GRACE" in result.stdout
    # What it prints is a valid configuration file that means the same.
    again = tmp_path / "printed.toml"
    again.write_text(result.stdout)
    second = _queuectld("--print-config", "--config", str(again))
    assert tomllib.loads(second.stdout) == printed


# -- logs --------------------------------------------------------------------------


def test_logs_under_journald_carry_priority_and_no_timestamp(svc: Service) -> None:
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(os.fdopen(read_fd, encoding="utf-8").read().splitlines())
    )
    reader.start()
    try:
        svc.start(
            "--workers",
            "1",
            env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stderr=write_fd,
            config=f"log_file = '{svc.home}/file.log'\n",
        )
    finally:
        os.close(write_fd)
    with svc.client() as c:
        c.enqueue("true", id="ok")
        c.enqueue("exit 3", id="bad", max_retries=0)
    wait_for(lambda: svc.job("bad")["state"] == "dead", what="the failing job")
    assert svc.stop()[0] == 0
    reader.join(10)
    events = {}
    for line in lines:
        match = re.match(r"^<(\d)>(\{.*\})$", line)
        assert match, f"not a journald line with a priority: {line!r}"
        event = json.loads(match.group(2))
        assert "timestamp" not in event  # journald stamps lines itself
        events[event["event"]] = (int(match.group(1)), event)
    assert events["daemon_ready"][0] == 6  # info
    assert events["job_dead"][0] == 4  # warning
    done = events["job_completed"][1]
    assert (done["job_id"], done["attempt"], done["worker"]) == ("ok", 1, "x1")
    # The file has what a file needs: timestamps, no priority prefix.
    for line in (svc.home / "file.log").read_text().splitlines():
        assert json.loads(line)["timestamp"]


def test_steady_state_is_quiet_and_console_format_is_for_people(svc: Service) -> None:
    svc.start("--workers", "2", "--log-format", "console", config="safety_poll = 0.1\n")
    wait_for(lambda: _workers(svc)["running"] == 2, what="workers")
    before = svc.stderr().count("\n")
    time.sleep(1.5)  # 15 safety polls, idle workers
    assert svc.stderr().count("\n") == before
    assert svc.stop()[0] == 0
    text = svc.stderr()
    assert "daemon_ready" in text and not text.lstrip().startswith("{")
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+ \[info\s*\] daemon_ready", text, re.MULTILINE)


# -- access by group -----------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates users: CI runs as root")


def _ensure_user(name: str, groups: list[str]) -> int:
    for group in groups:
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*cmd, "-G", ",".join(groups), name], check=True)
    return pwd.getpwnam(name).pw_uid


def _ping_as(uid: int, path: str) -> str:
    """Connect as ``uid`` (with its supplementary groups) and ping; the outcome as text."""
    pw = pwd.getpwuid(uid)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(uid)
            try:
                with Client.connect(path, autostart=False, timeout=10) as c:
                    answer = "pong" if c.ping()["pong"] else "?"
            except QueuectlError as exc:
                answer = f"{exc.code}: {exc.message}"
            os.write(write_fd, answer.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        answer = fh.read().decode()
    os.waitpid(pid, 0)
    return answer


@needs_root
def test_allowed_groups_admit_members_by_supplementary_group(svc: Service) -> None:
    member = _ensure_user("qcsvc_member", ["qcsvc_sock", "qcsvc_users"])
    outsider = _ensure_user("qcsvc_outsider", ["qcsvc_sock"])
    run = svc.home / "run"
    run.mkdir(mode=0o755)
    os.chmod(svc.home, 0o755)
    os.chmod(run, 0o755)
    sock = str(run / "q.sock")
    # Both may open the socket file (group qcsvc_sock, 0660); only members of
    # qcsvc_users pass the daemon's credential check.
    svc.start(
        "--socket",
        sock,
        config="socket_mode = '0660'\nsocket_group = 'qcsvc_sock'\n"
        "allowed_groups = ['qcsvc_users']\n",
    )
    assert _ping_as(member, sock) == "pong"
    assert _ping_as(outsider, sock).startswith("permission_denied: uid ")
    refused = svc.event("connection_refused")
    assert refused and refused[-1]["uid"] == outsider
    assert svc.stop()[0] == 0


def teardown_module() -> None:
    if TIMINGS:
        print("\nqueuectld stop timings (SIGTERM -> exit):")
        for what, seconds in TIMINGS.items():
            print(f"  {what}: {seconds:.2f}s")
