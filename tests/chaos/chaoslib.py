"""Helpers for the chaos suite: a real queuectld in a scratch directory, and ways to hurt it.

Every daemon runs as ``python -m queuectld`` in the foreground with its own
``QUEUECTL_HOME``; readiness is read from ``--ready-fd``. Everything it starts
(workers, jobs) inherits that ``QUEUECTL_HOME`` in its environment, which is how the
teardown finds and ends every process a test left behind, even orphans of a daemon
killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queuectl.client import Client
from queuectl.protocol import JobView

PYTHON = sys.executable
BIN = Path(PYTHON).parent
ACTIVE_STATES = ("pending", "processing", "failed")


@dataclass(frozen=True)
class ChaosOptions:
    """How hard the campaigns push (see conftest.py: --rounds, --long)."""

    long: bool
    rounds: int
    jobs: int
    ack_reps: int


class DaemonDied(AssertionError):
    pass


class DaemonProcess:
    """One queuectld process (restartable) over one state directory."""

    def __init__(
        self,
        home: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.home = home
        self.socket = home / "queuectld.sock"
        self.database = home / "queue.db"
        self.log_dir = home / "logs"
        self.log_file = home / "daemon.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL")}
        self.env = {
            **base,
            "QUEUECTL_HOME": str(home),
            "QUEUECTL_NO_AUTOSTART": "1",
            "QUEUECTLD_SAFETY_POLL": "1",
            **(env or {}),
        }
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    # -- life -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.home.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "queuectld",
                    "--home",
                    str(self.home),
                    "--ready-fd",
                    str(write_fd),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
                env=self.env,
                start_new_session=True,
            )
        os.close(write_fd)
        answer = b""
        deadline = time.monotonic() + timeout
        try:
            while b"READY" not in answer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                    break
                data = os.read(read_fd, 64)
                if not data:
                    break
                answer += data
        finally:
            os.close(read_fd)
        if b"READY" not in answer:
            code = self.proc.poll()
            if code is None:
                self.kill()
            raise DaemonDied(
                f"queuectld did not become ready (exit {code}); log tail:\n{self.log_tail()}"
            )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL the daemon (not its workers: they must notice on their own)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a drain) and wait for the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("queuectld did not stop after SIGTERM") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        """End the daemon and every process that carries this home (workers, jobs)."""
        if self.alive():
            self.kill()
        for pid in processes_of_home(self.home):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not processes_of_home(self.home), 10, "leftover processes")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- talking ----------------------------------------------------------------

    def client(self, timeout: float = 60.0) -> Client:
        return Client.connect(str(self.socket), autostart=False, timeout=timeout)

    def cli(
        self, *args: str, input: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the ``queuectl`` command line against this daemon."""
        return subprocess.run(
            [str(BIN / "queuectl"), "--socket", str(self.socket), "--no-autostart", *args],
            input=input,
            capture_output=True,
            env=self.env,
            timeout=timeout,
            cwd=self.home,
        )

    # -- looking ----------------------------------------------------------------

    def executors(self) -> list[int]:
        """Pids of this daemon's executor processes (its children running queuectld.executor)."""
        return [pid for pid in children(self.pid) if b"queuectld.executor" in cmdline(pid)]

    def job_groups(self) -> list[int]:
        """Process group ids of the jobs running now (each executor's children lead them)."""
        groups = []
        for worker in self.executors():
            for pid in children(worker):
                with contextlib.suppress(ProcessLookupError):
                    pgid = os.getpgid(pid)
                    if pgid == pid:
                        groups.append(pgid)
        return groups

    def rss_kb(self, pid: int | None = None) -> int:
        return rss_kb(self.pid if pid is None else pid)


# ---------------------------------------------------------------------------
# /proc


def _proc_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def ppid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    return [p for p in _proc_pids() if ppid_of(p) == pid]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def processes_of_home(home: Path) -> list[int]:
    """Every live process (but this one) whose environment has QUEUECTL_HOME=home."""
    marker = b"QUEUECTL_HOME=" + os.fsencode(str(home))
    out = []
    for pid in _proc_pids():
        if pid == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in env and state != "Z":
            out.append(pid)
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------------------
# Waiting and checking


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def counts(client: Client) -> dict[str, int]:
    return dict(client.status()["counts"])


def wait_drained(daemon: DaemonProcess, timeout: float) -> dict[str, int]:
    """Wait until no job is pending, processing or waiting for a retry."""
    with daemon.client() as c:

        def drained() -> dict[str, int] | None:
            now = counts(c)
            return now if all(now[s] == 0 for s in ACTIVE_STATES) else None

        try:
            return wait_until(drained, timeout, "the queue to drain", every=0.1)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(f"queue not drained: {counts(c)}\n{daemon.log_tail()}") from None


def all_jobs(client: Client, page: int = 2000) -> list[JobView]:
    """Every job, a page at a time (a reply must fit in one 4 MiB frame)."""
    jobs: list[JobView] = []
    while True:
        chunk, total = client.list_jobs(limit=page, offset=len(jobs))
        jobs += chunk
        if not chunk or len(jobs) >= total:
            return jobs


def side_effects(path: Path) -> Counter[str]:
    """How many times each job id was appended to a side-effect file."""
    if not path.exists():
        return Counter()
    return Counter(line.strip() for line in path.read_text().splitlines() if line.strip())


# Attempts that surely ran the command to its end (it exited by itself).
RAN = ("completed", "failed", "not_found")
# Attempts that may have run it or not: cut short by a kill, a timeout or a crash.
MAYBE_RAN = ("interrupted", "signaled", "timeout")
# Attempts charged against max-retries ("error": the shell could not even start).
CHARGED = (*RAN, "signaled", "timeout", "error")


def check_ledger(
    client: Client, expected_ids: set[str], executions: Counter[str]
) -> dict[str, int]:
    """The crash campaign's invariants, checked against the store and the side effects.

    Every expected job is in the store once, completed or dead; none is processing.
    Each attempt that was charged (it finished and was recorded) ran the command once;
    an attempt recorded as interrupted may or may not have run it. So for every job
    ``charged <= executions <= charged + interrupted``: a job ran more often than it
    was charged only when an interruption was recorded for it. A completed job has
    exactly one completed attempt, and it is the last one.
    """
    jobs = all_jobs(client)
    ids = [j["id"] for j in jobs]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"job ids stored twice: {dupes[:10]}"
    lost = expected_ids - set(ids)
    assert not lost, f"{len(lost)} acknowledged jobs lost: {sorted(lost)[:10]}"
    by_id = {j["id"]: j for j in jobs if j["id"] in expected_ids}
    finished = ("completed", "dead")
    unfinished = {i: j["state"] for i, j in by_id.items() if j["state"] not in finished}
    assert not unfinished, f"jobs not finished: {list(unfinished.items())[:10]}"
    stray = set(executions) - expected_ids
    assert not stray, f"side effects of unknown jobs: {sorted(stray)[:10]}"
    reruns = rerun_jobs = interrupted_total = 0
    for job_id in sorted(expected_ids):
        history = client.get_job(job_id)["history"]
        outcomes = [a["outcome"] for a in history]
        assert None not in outcomes, f"{job_id}: an attempt was never closed: {history}"
        charged = sum(1 for o in outcomes if o in CHARGED)
        surely_ran = sum(1 for o in outcomes if o in RAN)
        maybe_ran = sum(1 for o in outcomes if o in MAYBE_RAN)
        interrupted = outcomes.count("interrupted")
        interrupted_total += interrupted
        ran = executions.get(job_id, 0)
        assert surely_ran <= ran <= surely_ran + maybe_ran, (
            f"{job_id} ran {ran} times but its history is {outcomes}"
        )
        if ran > surely_ran:
            rerun_jobs += 1
            reruns += ran - surely_ran
        job = by_id[job_id]
        if job["state"] == "completed":
            assert outcomes.count("completed") == 1 and outcomes[-1] == "completed", (
                f"{job_id}: completed but history is {outcomes}"
            )
        else:
            assert "completed" not in outcomes, f"{job_id}: dead after completing: {outcomes}"
        assert job["attempts"] == charged, f"{job_id}: attempts {job['attempts']} vs {outcomes}"
        assert job["interruptions"] == interrupted, f"{job_id}: {job} vs {outcomes}"
    return {
        "jobs": len(expected_ids),
        "completed": sum(1 for j in by_id.values() if j["state"] == "completed"),
        "dead": sum(1 for j in by_id.values() if j["state"] == "dead"),
        "executions": sum(executions.values()),
        "interrupted_attempts": interrupted_total,
        "duplicate_executions": reruns,
        "jobs_run_twice": rerun_jobs,
        "lost": len(lost),
    }


# ---------------------------------------------------------------------------
# Raw protocol


HEADER = struct.Struct(">I")


class RawConn:
    """A bare socket to the daemon, for sending what no well-behaved client would."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, body: bytes) -> None:
        self.send(HEADER.pack(len(body)) + body)

    def recv_frame(self) -> dict[str, Any] | None:
        """One frame, or None if the daemon closed the connection."""
        from queuectl.protocol import unpack

        header = self._exactly(HEADER.size)
        if header is None:
            return None
        body = self._exactly(HEADER.unpack(header)[0])
        return None if body is None else unpack(body)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the daemon hangs up (replies it sent before are skipped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return True

    def _exactly(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
