"""The worker process: receive a job over stdin, run it, report the outcome on stdout.

A worker is an executor only: it never opens the store. It runs one attempt at a
time as ``sh -c COMMAND`` in the job's own process group, reads the job's stdout and
stderr through pipes (keeping at most ``log_max_bytes`` of each, so a job that
prints a gigabyte costs neither memory nor disk), enforces the timeout (SIGTERM to
the group, SIGKILL after the grace period), ends any background children the job
left behind, appends the attempt to the job's log file and reports back.

If the daemon goes away (stdin closes) while a job runs, the worker stops the job's
process group and exits: the daemon will hand the job out again when it restarts,
and a job must never run twice at once.
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from queuectl.protocol import (
    FrameBuffer,
    JobFinished,
    JobRevoked,
    JobStarted,
    Outcome,
    RunJob,
    WorkerReady,
    pack,
)
from queuectld import joblog, procs

READ_CHUNK = 65536
# After the job's group is killed, how long to wait for its pipes to close.
PIPE_DRAIN_S = 1.0


class Terminated(Exception):
    """SIGTERM reached the worker itself."""


@dataclass
class Capture:
    """Bytes read from one of the job's output pipes, capped."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))


class Channel:
    """The pipes to the daemon: frames in on fd 0, frames out on a private copy of fd 1."""

    def __init__(self) -> None:
        self.in_fd = 0
        # Keep the protocol on a private descriptor and point fd 1 at /dev/null, so
        # nothing printed by accident can corrupt a frame.
        self.out_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        self.frames = FrameBuffer()
        self.pending: list[dict[str, Any]] = []
        self.closed = False

    def send(self, msg: dict[str, Any]) -> None:
        view = memoryview(pack(msg))
        while view:
            view = view[os.write(self.out_fd, view) :]

    def read_available(self) -> None:
        """Read what is there (call when fd 0 is readable); EOF marks the channel closed."""
        data = os.read(self.in_fd, READ_CHUNK)
        if not data:
            self.closed = True
            return
        self.pending.extend(self.frames.feed(data))

    def hand_back(self, everything: bool) -> None:
        """Answer revoke requests: a queued job not started yet goes back (``revoked``).

        With ``everything`` (a cancel: the drain deadline passed) every queued job goes back.
        """
        wanted = {m.get("job_id") for m in self.pending if m.get("kind") == "revoke"}
        if not wanted and not everything:
            return
        keep: list[dict[str, Any]] = []
        for m in self.pending:
            kind = m.get("kind")
            if kind == "revoke":
                continue
            if kind == "run" and (everything or m.get("job_id") in wanted):
                try:
                    self.send(JobRevoked(str(m.get("job_id")), int(m.get("attempt", 0))).to_wire())
                except BrokenPipeError:
                    self.closed = True
                continue
            keep.append(m)
        self.pending = keep

    def next_message(self) -> dict[str, Any] | None:
        """Block until a message arrives; ``None`` once the daemon has closed the pipe."""
        while not self.pending and not self.closed:
            self.read_available()
        return self.pending.pop(0) if self.pending else None


def _classify(
    returncode: int, timed_out: bool, interrupted: bool, timeout: float
) -> tuple[Outcome, str | None]:
    if interrupted:
        return Outcome.INTERRUPTED, "stopped before it finished (drain or shutdown)"
    if timed_out:
        return Outcome.TIMEOUT, f"timed out after {timeout:g}s"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        return Outcome.SIGNALED, f"killed by signal {-returncode} {name}".strip()
    if returncode == 0:
        return Outcome.COMPLETED, None
    if returncode == 127:
        return Outcome.NOT_FOUND, "command not found (exit code 127)"
    if returncode == 126:
        return Outcome.FAILED, "command not executable (exit code 126)"
    return Outcome.FAILED, f"exit code {returncode}"


def run_job(job: RunJob, channel: Channel, env: dict[str, str]) -> JobFinished:
    """Run one attempt to its end and write its log block."""
    started = time.time()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    job_env = {**env, "QUEUECTL_JOB_ID": job.job_id, "QUEUECTL_ATTEMPT": str(job.attempt)}
    try:
        try:
            os.chdir(job.cwd)
        except OSError as exc:
            raise _StartError(f"cannot enter working directory {job.cwd}: {exc.strerror}") from None
        try:
            as_user = procs.identity_of(job.uid) if job.uid is not None else None
            proc = procs.spawn_job(job.command, out_w, err_w, job_env, as_user)
        except OSError as exc:
            raise _StartError(f"cannot start /bin/sh: {exc.strerror}") from None
    except _StartError as exc:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        finished = time.time()
        _write_log(job, started, finished, None, Outcome.ERROR, str(exc), {}, None)
        return JobFinished(
            job.job_id, job.attempt, Outcome.ERROR, None, str(exc), started, finished
        )
    os.close(out_w)
    os.close(err_w)
    try:
        channel.send(JobStarted(job.job_id, job.attempt, proc.pid).to_wire())
    except BrokenPipeError:
        channel.closed = True  # the daemon died as the job started: end it below

    captures = {out_r: Capture(job.log_max_bytes), err_r: Capture(job.log_max_bytes)}
    open_pipes = set(captures)
    pidfd = procs.open_pidfd(proc.pid)
    deadline = time.monotonic() + job.timeout
    kill_at = math.inf  # when SIGKILL follows the SIGTERM already sent
    timed_out = interrupted = False
    returncode: int | None = None
    if channel.closed:
        # The daemon is gone and runs the job again when it restarts: end this copy now,
        # not after a grace period, so the two never run at once.
        interrupted = True
        procs.signal_group(proc.pid, signal.SIGKILL)

    def stop_group(now: float) -> float:
        procs.signal_group(proc.pid, signal.SIGTERM)
        return now + job.kill_grace

    try:
        while returncode is None:
            now = time.monotonic()
            if not timed_out and not interrupted and now >= deadline:
                timed_out = True
                kill_at = stop_group(now)
            if now >= kill_at:
                procs.signal_group(proc.pid, signal.SIGKILL)
                kill_at = math.inf
            next_event = min(deadline if not (timed_out or interrupted) else math.inf, kill_at)
            wait = max(0.0, next_event - now)
            watch = list(open_pipes)
            if not channel.closed:
                watch.append(channel.in_fd)
            if pidfd is not None:
                watch.append(pidfd)
            else:
                wait = min(wait, 0.05)  # no pidfd: poll the child
            ready, _, _ = select.select(watch, [], [], None if wait == math.inf else wait)
            for fd in ready:
                if fd in open_pipes:
                    chunk = os.read(fd, READ_CHUNK)
                    if chunk:
                        captures[fd].add(chunk)
                    else:
                        open_pipes.discard(fd)
                elif fd == channel.in_fd:
                    channel.read_available()
                    cancel = channel.closed or any(
                        m.get("kind") == "cancel" for m in channel.pending
                    )
                    channel.pending = [m for m in channel.pending if m.get("kind") != "cancel"]
                    channel.hand_back(everything=cancel)
                    if channel.closed:
                        # The daemon died (see above): SIGKILL, no grace period.
                        interrupted = True
                        procs.signal_group(proc.pid, signal.SIGKILL)
                        kill_at = math.inf
                    elif cancel and not interrupted:
                        interrupted = True
                        kill_at = stop_group(time.monotonic())
            if pidfd is None or pidfd in ready:
                returncode = proc.poll()
    except Terminated:
        interrupted = True
        procs.signal_group(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    finally:
        if pidfd is not None:
            os.close(pidfd)
    # The shell is gone; end whatever it left running in its group.
    procs.signal_group(proc.pid, signal.SIGKILL)
    _drain(open_pipes, captures)
    for fd in captures:
        os.close(fd)
    finished = time.time()
    outcome, error = _classify(returncode, timed_out, interrupted, job.timeout)
    exit_code = returncode if returncode >= 0 else None
    log_error = _write_log(job, started, finished, exit_code, outcome, error, captures, out_r)
    if log_error and error is None:
        error = log_error
    return JobFinished(job.job_id, job.attempt, outcome, exit_code, error, started, finished)


class _StartError(Exception):
    pass


def _drain(open_pipes: set[int], captures: dict[int, Capture]) -> None:
    """Read what is left in the pipes; give up on ones an escaped process still holds."""
    until = time.monotonic() + PIPE_DRAIN_S
    while open_pipes:
        left = until - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(open_pipes), [], [], left)
        for fd in ready:
            chunk = os.read(fd, READ_CHUNK)
            if chunk:
                captures[fd].add(chunk)
            else:
                open_pipes.discard(fd)


def _write_log(
    job: RunJob,
    started: float,
    finished: float,
    exit_code: int | None,
    outcome: Outcome,
    error: str | None,
    captures: dict[int, Capture],
    out_fd: int | None,
) -> str | None:
    """Append the attempt to the job's log; return a note if that failed (disk full)."""
    out = captures.get(out_fd, Capture(0)) if out_fd is not None else Capture(0)
    err = next((c for fd, c in captures.items() if fd != out_fd), Capture(0))
    block = joblog.format_attempt(
        job_id=job.job_id,
        attempt=job.attempt,
        command=job.command,
        started_at=started,
        finished_at=finished,
        exit_code=exit_code,
        outcome=outcome.value,
        error=error,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
    )
    try:
        joblog.append(job.log_path, block, owner_uid=job.uid)
    except OSError as exc:
        return f"job log not written: {exc.strerror}"
    return None


def main() -> int:
    """Worker entry point (``python -m queuectld.worker``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_term)
    channel = Channel()
    env = dict(os.environ)
    try:
        channel.send(WorkerReady(pid=os.getpid()).to_wire())
        while True:
            msg = channel.next_message()
            if msg is None:
                return 0
            if msg.get("kind") != "run":
                continue
            body = {k: v for k, v in msg.items() if k != "kind"}
            result = run_job(RunJob(**body), channel, env)
            if channel.closed:
                return 0  # the daemon is gone; nobody to report to
            channel.send(result.to_wire())
    except (Terminated, BrokenPipeError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
