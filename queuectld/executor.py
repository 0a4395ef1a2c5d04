"""An executor process: runs many jobs at once, reports their outcomes in batches.

The daemon runs a few executors (about one per CPU) and gives each a number of
*slots*, its share of ``worker start --count N``. An executor never opens the store:
it receives :class:`~queuectld.execproto.RunJob` messages on stdin, starts each job as
``sh -c COMMAND`` in a process group of its own, and reports what happened on stdout.

One thread, one ``epoll`` loop, no blocking wait per job:

* a job's exit is noticed through its pidfd; its timeout and the grace period between
  SIGTERM and SIGKILL are entries in one timer heap;
* its stdout and stderr go through pipes that are *spliced* into a private unlinked
  file (no Python per byte); the first half of ``log_max_bytes`` is kept, and the
  last half as a ring, so a job that prints a gigabyte costs neither memory nor disk
  and its log keeps both ends, with a marker of what was cut;
* when the attempt is over, its block is appended to ``job_<id>.txt`` in the seed's
  format (the file ranges copied with ``copy_file_range``);
* everything noticed in one turn of the loop goes back to the daemon in one frame.

If the daemon goes away (stdin closes), every job's group is killed at once (the
daemon runs them again when it restarts, and a job never runs twice at once) and the
executor exits. SIGTERM interrupts every job, reports them, and exits.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import heapq
import itertools
import math
import os
import selectors
import signal
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from queuectl.protocol import Outcome
from queuectl.wire import FrameBuffer
from queuectld import joblog, procs
from queuectld.execproto import (
    ExecutorReady,
    JobFinished,
    JobRevoked,
    JobStarted,
    RunJob,
    batch_items,
    pack_batch,
)

READ_CHUNK = 65536
# After a job's shell exits and its group is killed, how long to wait for its pipes to
# close (a process that left the group may hold them open).
PIPE_DRAIN_S = 1.0
# Log blocks whose kept output is at most this big are assembled in memory and written
# at once; bigger ones are copied file to file by the kernel.
SMALL_BLOCK = 64 * 1024
_SPLICE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)


class Capture:
    """One output stream of a job, moved from its pipe into a private file by the kernel.

    The first ``head`` bytes are kept in order; later bytes go round a ring of ``tail``
    bytes, so the file never holds more than ``head + tail`` and keeps the end too.
    """

    splice_ok = True

    def __init__(self, pipe: int, limit: int, tmp_dir: str) -> None:
        self.pipe = pipe
        self.head = limit - limit // 2
        self.tail = limit // 2
        self.tmp_dir = tmp_dir
        self.file: int | None = None
        self.total = 0  # bytes the job wrote to the stream
        self.open = True

    def pump(self) -> bool:
        """Move what the pipe holds into the file; False once the pipe reached EOF.

        Call it when the pipe is readable. The file is made only when there are bytes
        to keep: most short jobs print nothing, and making a file costs an inode.
        """
        if self.file is None:
            if not _bytes_waiting(self.pipe):
                return False  # readable with nothing in it: EOF
            self.file = _private_file(self.tmp_dir)
        while True:
            if self.total < self.head:
                offset, room = self.total, self.head - self.total
            else:
                pos = (self.total - self.head) % self.tail
                offset, room = self.head + pos, self.tail - pos
            count = min(room, READ_CHUNK)
            try:
                if self.splice_ok:
                    moved = os.splice(
                        self.pipe, self.file, count, offset_dst=offset, flags=_SPLICE_FLAGS
                    )
                else:
                    moved = self._copy(offset, count)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.splice_ok:
                    raise
                Capture.splice_ok = False  # this kernel or file system cannot splice
                continue
            if moved == 0:
                return False
            self.total += moved

    def _copy(self, offset: int, count: int) -> int:
        data = os.read(self.pipe, count)
        assert self.file is not None
        os.pwrite(self.file, data, offset)
        return len(data)

    @property
    def dropped(self) -> int:
        return max(0, self.total - self.head - self.tail)

    def pieces(self) -> list[bytes | tuple[int, int, int]]:
        """The kept output in order: bytes, or ``(fd, offset, length)`` file ranges."""
        if self.file is None or self.total == 0:
            return []
        if not self.dropped:
            return [(self.file, 0, self.total)]
        start = self.head + (self.total - self.head) % self.tail
        end = self.head + self.tail
        marker = f"[... output truncated: {self.dropped} more bytes not kept ...]\n".encode()
        head_nl = b"" if self._byte_at(self.head - 1) == b"\n" else b"\n"
        return [
            (self.file, 0, self.head),
            head_nl + marker,
            (self.file, start, end - start),
            (self.file, self.head, start - self.head),
        ]

    def last_byte(self) -> bytes:
        if self.file is None or self.total == 0:
            return b""
        if self.total <= self.head + self.tail:
            return self._byte_at(self.total - 1)
        pos = self.head + (self.total - self.head - 1) % self.tail
        return self._byte_at(pos)

    def _byte_at(self, offset: int) -> bytes:
        assert self.file is not None
        return os.pread(self.file, 1, offset)

    def close(self) -> None:
        if self.open:
            os.close(self.pipe)
            self.open = False

    def release(self) -> None:
        self.close()
        if self.file is not None:
            os.close(self.file)
            self.file = None


def _bytes_waiting(pipe: int) -> int:
    """How many bytes a pipe holds (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


def _private_file(directory: str) -> int:
    """An unlinked read-write file, on the log directory's file system when possible."""
    for where in (directory, "/tmp"):
        try:
            return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (OSError, AttributeError):
            continue
    import tempfile

    fd, path = tempfile.mkstemp(prefix="queuectl-out-")
    os.unlink(path)
    return fd


@dataclass(eq=False)
class Attempt:
    """One running attempt of a job."""

    run: RunJob
    handle: procs.JobHandle  # kept until the attempt ends (reaps the shell)
    pid: int
    pidfd: int | None
    started_at: float
    out: Capture
    err: Capture
    timed_out: bool = False
    interrupted: bool = False
    stopping: bool = False  # SIGTERM sent, SIGKILL due at the grace period's end
    returncode: int | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.returncode is not None and not self.out.open and not self.err.open


def classify(
    returncode: int, timed_out: bool, interrupted: bool, timeout: float
) -> tuple[Outcome, str | None]:
    """The outcome of an attempt and its one-line reason."""
    if interrupted:
        return Outcome.INTERRUPTED, "stopped before it finished (drain, shutdown or kill)"
    if timed_out:
        return Outcome.TIMEOUT, f"timed out after {timeout:g}s"
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.valid_signals() else ""
        return Outcome.SIGNALED, f"killed by signal {sig} {name}".strip()
    if returncode == 0:
        return Outcome.COMPLETED, None
    if returncode == 127:
        return Outcome.NOT_FOUND, "command not found (exit code 127)"
    if returncode == 126:
        return Outcome.FAILED, "command not executable (exit code 126)"
    return Outcome.FAILED, f"exit code {returncode}"


class Executor:
    """The loop of one executor process (see the module docstring)."""

    def __init__(self, in_fd: int, out_fd: int, env: dict[str, str]) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.env = env
        self.sel = selectors.DefaultSelector()
        self.frames = FrameBuffer()
        self.slots = 0
        self.waiting: collections.deque[RunJob] = collections.deque()
        self.running: dict[str, Attempt] = {}
        self.outbox: list[dict[str, Any]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.retiring = False
        self.closed = False  # the daemon is gone
        self.terminated = False
        self.sel.register(in_fd, selectors.EVENT_READ, self._read_channel)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        self.outbox.append(ExecutorReady(os.getpid()).to_wire())
        while True:
            self._fire_timers()
            self._start_waiting()
            self._flush()  # after the timers too: a timer may end an attempt
            if self.closed:
                self._kill_all()
                return 0
            if (self.retiring or self.terminated) and not self.running and not self.waiting:
                return 0
            delay = self._next_timer()
            for key, _ in self.sel.select(None if delay == math.inf else delay):
                key.data()

    def at(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` seconds (from the loop)."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), action))

    def _fire_timers(self) -> None:
        """Run the timers that are due."""
        while self._timers and self._timers[0][0] <= time.monotonic():
            _, _, action = heapq.heappop(self._timers)
            action()

    def _next_timer(self) -> float:
        """Seconds until the next timer (infinity when there is none)."""
        if not self._timers:
            return math.inf
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _flush(self) -> None:
        if not self.outbox or self.closed:
            self.outbox.clear()
            return
        view = memoryview(pack_batch(self.outbox))
        self.outbox.clear()
        try:
            while view:
                view = view[os.write(self.out_fd, view) :]
        except (BrokenPipeError, ConnectionError):
            self.closed = True

    # -- messages from the daemon ---------------------------------------------------

    def _read_channel(self) -> None:
        try:
            data = os.read(self.in_fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self.closed = True
            self.sel.unregister(self.in_fd)
            return
        for frame in self.frames.feed(data):
            for msg in batch_items(frame):
                self._handle(msg)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        if kind == "run":
            if self.retiring or self.terminated:
                self._revoke_one(RunJob.from_wire(msg))
            else:
                self.waiting.append(RunJob.from_wire(msg))
        elif kind == "slots":
            self.slots = int(msg["count"])
        elif kind == "revoke":
            self._revoke(set(msg.get("job_ids") or ()))
        elif kind == "cancel":
            ids = msg.get("job_ids")
            self._cancel(None if ids is None else set(ids))
        elif kind == "retire":
            self.retiring = True
            self._revoke(None)

    def _revoke_one(self, run: RunJob) -> None:
        self.outbox.append(JobRevoked(run.job_id, run.attempt).to_wire())

    def _revoke(self, ids: set[str] | None) -> None:
        """Hand back waiting jobs (all, or those in ``ids``); started ones are not affected."""
        keep: collections.deque[RunJob] = collections.deque()
        for run in self.waiting:
            if ids is None or run.job_id in ids:
                self._revoke_one(run)
            else:
                keep.append(run)
        self.waiting = keep

    def _cancel(self, ids: set[str] | None) -> None:
        self._revoke(ids)
        for attempt in list(self.running.values()):
            if ids is None or attempt.run.job_id in ids:
                attempt.interrupted = True
                self._stop(attempt)

    def on_sigterm(self) -> None:
        """SIGTERM reached the executor: end every job now, report them, exit."""
        self.terminated = True
        self._revoke(None)
        for attempt in list(self.running.values()):
            attempt.interrupted = True
            procs.signal_group(attempt.pid, signal.SIGKILL)

    # -- starting jobs ----------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self.waiting and len(self.running) < self.slots and not self.terminated:
            self._start(self.waiting.popleft())

    def _start(self, run: RunJob) -> None:
        started = time.time()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        env = {**self.env, "QUEUECTL_JOB_ID": run.job_id, "QUEUECTL_ATTEMPT": str(run.attempt)}
        try:
            proc = self._spawn(run, out_w, err_w, env)
        except _StartError as exc:
            os.close(out_r)
            os.close(err_r)
            self._report_unstarted(run, started, str(exc))
            return
        finally:
            os.close(out_w)
            os.close(err_w)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        tmp_dir = os.path.dirname(run.log_path) or "."
        attempt = Attempt(
            run=run,
            handle=proc,
            pid=proc.pid,
            pidfd=procs.open_pidfd(proc.pid),
            started_at=started,
            out=Capture(out_r, run.log_max_bytes, tmp_dir),
            err=Capture(err_r, run.log_max_bytes, tmp_dir),
        )
        self.running[run.job_id] = attempt
        self.outbox.append(JobStarted(run.job_id, run.attempt, proc.pid).to_wire())
        read = selectors.EVENT_READ
        self.sel.register(out_r, read, lambda: self._on_output(attempt, attempt.out))
        self.sel.register(err_r, read, lambda: self._on_output(attempt, attempt.err))
        if attempt.pidfd is not None:
            self.sel.register(attempt.pidfd, read, lambda: self._on_exit(attempt))
        else:
            self._poll_exit(attempt)
        self.at(run.timeout, lambda: self._on_timeout(attempt))

    def _spawn(self, run: RunJob, out_w: int, err_w: int, env: dict[str, str]) -> procs.JobHandle:
        # Every time, even for the same path: the directory may have been replaced.
        try:
            os.chdir(run.cwd)
        except OSError as exc:
            raise _StartError(f"cannot enter working directory {run.cwd}: {exc.strerror}") from None
        try:
            as_user = procs.identity_of(run.uid) if run.uid is not None else None
            return procs.spawn_job(run.command, out_w, err_w, env, as_user)
        except OSError as exc:
            raise _StartError(f"cannot start /bin/sh: {exc.strerror}") from None

    def _report_unstarted(self, run: RunJob, started: float, error: str) -> None:
        finished = time.time()
        block = _header(run, started, finished, None, Outcome.ERROR, error)
        block += b"--- STDERR ---\n\n"
        try:
            joblog.append(run.log_path, block, owner_uid=run.uid)
        except OSError:
            pass
        self.outbox.append(
            JobFinished(
                run.job_id, run.attempt, Outcome.ERROR, None, error, started, finished
            ).to_wire()
        )

    # -- a running job ------------------------------------------------------------------

    def _poll_exit(self, attempt: Attempt) -> None:
        """No pidfd on this kernel: look at the child every 50 ms."""
        if self._reap(attempt):
            self._exited(attempt)
        else:
            self.at(0.05, lambda: self._poll_exit(attempt))

    def _reap(self, attempt: Attempt) -> bool:
        # Through the handle that started it: a Popen (a job run as another user) must
        # reap its own child, or its clean-up could reap it first and lose the status.
        code = attempt.handle.poll()
        if code is None:
            return False
        attempt.returncode = code
        return True

    def _on_exit(self, attempt: Attempt) -> None:
        assert attempt.pidfd is not None
        if not self._reap(attempt):
            return
        self.sel.unregister(attempt.pidfd)
        os.close(attempt.pidfd)
        attempt.pidfd = None
        self._exited(attempt)

    def _exited(self, attempt: Attempt) -> None:
        # The shell is gone; end whatever it left running in its group. What is left in
        # its pipes arrives as read events (EOF included).
        procs.signal_group(attempt.pid, signal.SIGKILL)
        if attempt.done:
            self._finish(attempt)
        else:
            self.at(PIPE_DRAIN_S, lambda: self._give_up_pipes(attempt))

    def _on_output(self, attempt: Attempt, capture: Capture) -> None:
        if not capture.open:
            return
        try:
            more = capture.pump()
        except OSError as exc:
            attempt.extra.append(f"output not kept: {exc.strerror}")
            more = False
        if not more:
            self.sel.unregister(capture.pipe)
            capture.close()
            if attempt.done:
                self._finish(attempt)

    def _give_up_pipes(self, attempt: Attempt) -> None:
        """A process that left the job's group still holds its output: stop waiting."""
        if attempt.run.job_id not in self.running or attempt.done:
            return
        for capture in (attempt.out, attempt.err):
            if capture.open:
                self.sel.unregister(capture.pipe)
                capture.close()
        self._finish(attempt)

    def _on_timeout(self, attempt: Attempt) -> None:
        if attempt.returncode is not None or attempt.stopping:
            return
        attempt.timed_out = True
        self._stop(attempt)

    def _stop(self, attempt: Attempt) -> None:
        """SIGTERM to the job's group, SIGKILL when the grace period ends."""
        if attempt.returncode is not None or attempt.stopping:
            return
        attempt.stopping = True
        procs.signal_group(attempt.pid, signal.SIGTERM)

        def kill() -> None:
            if attempt.returncode is None:
                procs.signal_group(attempt.pid, signal.SIGKILL)

        self.at(attempt.run.kill_grace, kill)

    def _finish(self, attempt: Attempt) -> None:
        run = attempt.run
        self.running.pop(run.job_id, None)
        assert attempt.returncode is not None
        finished = time.time()
        outcome, error = classify(
            attempt.returncode, attempt.timed_out, attempt.interrupted, run.timeout
        )
        exit_code = attempt.returncode if attempt.returncode >= 0 else None
        try:
            _write_log(attempt, finished, exit_code, outcome, error)
        except OSError as exc:
            attempt.extra.append(f"job log not written: {exc.strerror}")
        finally:
            attempt.out.release()
            attempt.err.release()
        if error is None and attempt.extra:
            error = "; ".join(attempt.extra)
        self.outbox.append(
            JobFinished(
                run.job_id, run.attempt, outcome, exit_code, error, attempt.started_at, finished
            ).to_wire()
        )

    def _kill_all(self) -> None:
        """The daemon is gone: it will run these jobs again, so none may go on running."""
        for attempt in self.running.values():
            procs.signal_group(attempt.pid, signal.SIGKILL)


class _StartError(Exception):
    pass


def _header(
    run: RunJob,
    started: float,
    finished: float,
    exit_code: int | None,
    outcome: Outcome,
    error: str | None,
) -> bytes:
    return joblog.format_header(
        job_id=run.job_id,
        attempt=run.attempt,
        command=run.command,
        started_at=started,
        finished_at=finished,
        exit_code=exit_code,
        outcome=outcome.value,
        error=error,
    )


def _write_log(
    attempt: Attempt,
    finished: float,
    exit_code: int | None,
    outcome: Outcome,
    error: str | None,
) -> None:
    """Append the attempt's block: header, stdout and stderr (both ends if cut)."""
    run = attempt.run
    pieces: list[bytes | tuple[int, int, int]] = [
        _header(run, attempt.started_at, finished, exit_code, outcome, error)
    ]
    for capture, title in ((attempt.out, None), (attempt.err, b"--- STDERR ---\n")):
        if title is not None:
            pieces.append(title)
        pieces += capture.pieces()
        if capture.total and capture.last_byte() != b"\n":
            pieces.append(b"\n")
    pieces.append(b"\n")
    kept = sum(len(p) if isinstance(p, bytes) else p[2] for p in pieces)
    if kept <= SMALL_BLOCK:
        joblog.append(run.log_path, b"".join(_materialize(p) for p in pieces), run.uid)
    else:
        joblog.append_pieces(run.log_path, pieces, run.uid)


def _materialize(piece: bytes | tuple[int, int, int]) -> bytes:
    if isinstance(piece, bytes):
        return piece
    fd, offset, length = piece
    return os.pread(fd, length, offset) if length else b""


def main() -> int:
    """Executor entry point (``python -m queuectld.executor``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep the protocol on a private descriptor and point fd 1 at /dev/null, so nothing
    # printed by accident can corrupt a frame.
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    os.set_inheritable(out_fd, False)
    executor = Executor(0, out_fd, dict(os.environ))

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def on_wake() -> None:
        try:
            data = os.read(wake_r, 64)
        except BlockingIOError:
            return
        if signal.SIGTERM.value in data:
            executor.on_sigterm()

    executor.sel.register(wake_r, selectors.EVENT_READ, on_wake)
    try:
        return executor.run()
    except (BrokenPipeError, ConnectionError):
        executor._kill_all()
        return 0


if __name__ == "__main__":
    sys.exit(main())
