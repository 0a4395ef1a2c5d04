"""A real ``queuectld`` in a temporary directory, for tests (no mocks).

:class:`QueueDaemon` starts ``python -m queuectld --home TMP --log-format json`` in the
foreground, waits for the ``READY`` line it writes to ``--ready-fd`` once it listens,
and offers the few things tests do with a daemon: run the real ``queuectl`` command,
open a :class:`queuectl.Client`, restart it, ``kill -9`` it, wait for a condition.

Every process a test daemon starts (the daemon, its workers, their jobs) carries
``QUEUECTL_TEST_TAG=<home>`` in its environment, so teardown can find and end
whatever is left behind, and only that, even after a ``kill -9`` of the daemon.

The fixtures in ``tests/conftest.py`` wrap this; import from here for type hints::

    from tests.harness import QueueDaemon
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from queuectl.client import Client
from queuectl.protocol import StatusView

T = TypeVar("T")

TAG_VAR = "QUEUECTL_TEST_TAG"
START_TIMEOUT_S = 30.0
# Variables of the developer's own queue that must not leak into a test daemon or CLI.
_PRIVATE_PREFIXES = ("QUEUECTL_", "QUEUECTLD_")
_PRIVATE_VARS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without queuectl and systemd variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_PRIVATE_PREFIXES) and k not in _PRIVATE_VARS
    }
    env.update(extra or {})
    return env


def short_tmpdir(prefix: str = "qc-") -> Path:
    """A fresh directory under /tmp, short enough for an AF_UNIX path (< 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def queuectl_command() -> list[str]:
    """The real ``queuectl`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("queuectl")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "queuectl.cli"]


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # The state follows the parenthesised command name, which may hold spaces.
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``QUEUECTL_TEST_TAG=tag``."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if needle in environ and pid_alive(int(entry)):
            found.append(int(entry))
    return found


class QueueDaemon:
    """One foreground ``queuectld`` with its own home directory.

    ``settings`` become ``QUEUECTLD_<KEY>`` environment variables of the daemon (for
    example ``{"kill_grace": 1}``); they apply to every (re)start.
    """

    def __init__(self, home: Path, settings: Mapping[str, Any] | None = None) -> None:
        self.home = home
        self.socket = home / "queuectld.sock"
        self.database = home / "queue.db"
        self.log_dir = home / "logs"
        self.stderr_path = home / "queuectld.stderr"
        self.settings = {k: str(v) for k, v in (settings or {}).items()}
        # "postgres" when the settings name a PostgreSQL store (tests/conftest.py does).
        url = self.settings.get("store_url", "")
        self.backend = "postgres" if url.startswith("postgres") else "sqlite"
        self.tag = str(home)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def store_key(self) -> str:
        """What the daemon tags its jobs and names its cgroup directory by."""
        from queuectld.config import DaemonConfig

        fields = {k: v for k, v in self.settings.items() if k in ("store_url", "store_schema")}
        node = self.settings.get("node_id", "")
        config = DaemonConfig(home=str(self.home), node_id=node, **fields).resolved()
        return config.store_key()

    # -- environment ----------------------------------------------------------

    def daemon_env(self) -> dict[str, str]:
        settings = {f"QUEUECTLD_{k.upper()}": v for k, v in self.settings.items()}
        return clean_env({TAG_VAR: self.tag, **settings})

    def cli_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment the CLI runs in: this daemon's home, autostart off."""
        env = {"QUEUECTL_HOME": str(self.home), "QUEUECTL_NO_AUTOSTART": "1", TAG_VAR: self.tag}
        # A daemon the CLI autostarts (tests that turn autostart on) uses the same store;
        # not the node_id: it is another daemon, and must not take this one's leases.
        for key in ("store_url", "store_schema"):
            if key in self.settings:
                env[f"QUEUECTLD_{key.upper()}"] = self.settings[key]
        return clean_env({**env, **(extra or {})})

    # -- lifecycle ------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon is not running"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the daemon and return once it has written READY (it listens by then)."""
        assert not self.running(), "the daemon is already running"
        self.home.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "queuectld",
            "--home",
            str(self.home),
            "--log-format",
            "json",
            "--ready-fd",
            str(write_fd),
        ]
        with open(self.stderr_path, "ab") as err:
            try:
                self.proc = subprocess.Popen(
                    cmd,
                    env=self.daemon_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    pass_fds=(write_fd,),
                    cwd=self.home,
                )
            finally:
                os.close(write_fd)
        self.starts += 1
        answer = b""
        deadline = time.monotonic() + timeout
        with os.fdopen(read_fd, "rb", buffering=0) as ready:
            while b"READY" not in answer and (left := deadline - time.monotonic()) > 0:
                if not select.select([ready], [], [], left)[0]:
                    break
                chunk = ready.read(64)
                if not chunk:
                    break  # the daemon exited (or closed the pipe) without READY
                answer += chunk
        if b"READY" not in answer:
            self.kill9()
            raise RuntimeError(
                f"queuectld did not become ready in {timeout:g}s; its output:\n{self.stderr_text()}"
            )

    def stop(self, timeout: float = 60.0) -> int | None:
        """Drain and stop (SIGTERM, the systemd way); return the exit status.

        If it has not exited after ``timeout`` seconds a second SIGTERM stops running
        jobs at once, and SIGKILL follows if even that does not end it.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> None:
        """A clean stop (drain) followed by a start on the same home."""
        code = self.stop()
        assert code == 0, f"queuectld exited with {code}:\n{self.stderr_text()}"
        self.start()

    def kill9(self) -> None:
        """SIGKILL the daemon (only the daemon: its workers find out by themselves)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def leftovers(self) -> list[int]:
        """Processes started for this daemon (workers, jobs) that are still alive."""
        own = {self.proc.pid} if self.proc is not None and self.proc.poll() is None else set()
        return [pid for pid in tagged_pids(self.tag) if pid not in own]

    def cleanup(self) -> None:
        """Stop the daemon, then end anything it left behind; keep the home directory."""
        with contextlib.suppress(Exception):
            self.stop(timeout=20.0)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not tagged_pids(self.tag), timeout=5.0, what="leftover processes")
        for pid in tagged_pids(self.tag):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # -- talking to it ----------------------------------------------------------

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``queuectl ARGS`` against this daemon; never raises on a non-zero exit."""
        return subprocess.run(
            [*queuectl_command(), *args],
            input=input,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env=self.cli_env(env),
            cwd=cwd if cwd is not None else self.home,
            check=False,
        )

    def cli(
        self, *args: str, timeout: float = 60.0, cwd: str | os.PathLike[str] | None = None
    ) -> str:
        """``queuectl ARGS`` that must succeed; returns its stdout."""
        proc = self.run(*args, timeout=timeout, cwd=cwd)
        assert proc.returncode == 0, (
            f"queuectl {' '.join(args)} exited with {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
        return proc.stdout

    def cli_json(self, *args: str, timeout: float = 60.0) -> Any:
        """``queuectl ARGS --json``, parsed (not for ``enqueue ... -- COMMAND``)."""
        return json.loads(self.cli(*args, "--json", timeout=timeout))

    def client(self, timeout: float = 30.0) -> Client:
        """A :class:`queuectl.Client` on this daemon's socket (never autostarts)."""
        return Client.connect(str(self.socket), autostart=False, timeout=timeout)

    def status(self) -> StatusView:
        with self.client() as c:
            return c.status()

    def counts(self) -> dict[str, int]:
        return dict(self.status()["counts"])

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.get_job(job_id))

    def wait_for_state(self, job_id: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll until job ``job_id`` is in one of ``states``; return the job."""
        with self.client() as c:

            def check() -> dict[str, Any] | None:
                job = dict(c.get_job(job_id))
                return job if job["state"] in states else None

            return wait_for(check, timeout, what=f"job {job_id} to be {'/'.join(states)}")

    def watch_until_idle(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Follow job events until the daemon says nothing is left to run; return them.

        Fails if no event arrives for ``timeout`` seconds.
        """
        with self.client(timeout=timeout) as c:
            return list(c.watch(until_idle=True))

    # -- what it left on disk ---------------------------------------------------

    def job_log(self, job_id: str) -> str:
        return (self.log_dir / f"job_{job_id}.txt").read_text()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's structured log so far (one JSON object a line on stderr)."""
        events = []
        for line in self.stderr_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events


@contextlib.contextmanager
def temporary_home(prefix: str = "qc-") -> Iterator[Path]:
    """A short temporary directory, removed afterwards."""
    home = short_tmpdir(prefix)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)
