"""An executor process: runs many jobs at once, reports their outcomes in batches.

The daemon runs a few executors (about one per CPU) and gives each a number of
*slots*, its share of ``worker start --count N``. An executor never opens the store:
it receives :class:`~queuectld.execproto.RunJob` messages on stdin, starts each job as
``sh -c COMMAND`` in a process group of its own, and reports what happened on stdout.

One thread, one ``epoll`` loop, no blocking wait per job:

* a job's exit is noticed through its pidfd; its timeout and the grace period between
  SIGTERM and SIGKILL are entries in one timer heap;
* its stdout and stderr are kept by :mod:`queuectld.capture` (spliced from their
  pipes, both ends of a long output) and written as its block in ``job_<id>.txt``
  when the attempt is over; while the daemon asks (:class:`~queuectld.execproto.Follow`)
  each range kept is also sent back as :class:`~queuectld.execproto.JobOutput`;
* everything noticed in one turn of the loop goes back to the daemon in one frame.

If the daemon goes away (stdin closes), every job's group is killed at once (the
daemon runs them again when it restarts, and a job never runs twice at once) and the
executor exits. SIGTERM interrupts every job, reports them, and exits.
"""

from __future__ import annotations

import collections
import heapq
import math
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from queuectl.protocol import Outcome
from queuectl.sizes import format_size, human_size
from queuectl.wire import FrameBuffer
from queuectld import cgroup, limits, procs
from queuectld.capture import READ_CHUNK, Capture, write_log
from queuectld.execproto import (
    ExecutorReady,
    JobFinished,
    JobOutput,
    JobRevoked,
    JobStarted,
    RunJob,
    batch_items,
    pack_batch,
)

# After a job's shell exits and its group is killed, how long to wait for its pipes to
# close (a process that left the group may hold them open).
PIPE_DRAIN_S = 1.0
# Followed output waiting in the outbox is written out once it is this big, so that a
# job printing fast cannot grow a frame past the frame limit.
OUTPUT_FLUSH_BYTES = 1024 * 1024


@dataclass(eq=False)
class Timer:
    """An action due at a monotonic time; a cancelled one keeps nothing alive."""

    when: float
    action: Callable[[], None] | None

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


@dataclass(eq=False)
class Attempt:
    """One running attempt of a job."""

    run: RunJob
    handle: procs.JobProcess  # kept until the attempt ends (reaps the shell)
    cgroup: str | None  # the attempt's cgroup, when contained (see queuectld.cgroup)
    pidfd: int | None
    started_at: float
    out: Capture
    err: Capture
    limits_note: str | None = None  # the limits applied and in which form (log header)
    timed_out: bool = False
    interrupted: bool = False
    killed: int = 0  # the signal of a user's `kill` (0: none)
    stopping: bool = False  # SIGTERM sent, SIGKILL due at the grace period's end
    returncode: int | None = None
    extra: list[str] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)  # cancelled when it ends

    @property
    def pid(self) -> int:
        """The shell's pid, which is also its process group id."""
        return self.handle.pid

    @property
    def done(self) -> bool:
        return self.returncode is not None and not self.out.open and not self.err.open


def classify(
    returncode: int,
    timed_out: bool,
    interrupted: bool,
    timeout: float,
    killed: int = 0,
    oom_kills: int = 0,
    memory_limit: str | None = None,
    cpu_limit_s: int | None = None,
) -> tuple[Outcome, str | None]:
    """The outcome of an attempt and its one-line reason."""
    if killed:
        return Outcome.KILLED, f"killed by request ({_signal_name(killed)})"
    if interrupted:
        return Outcome.INTERRUPTED, "stopped before it finished (drain, shutdown or kill)"
    if timed_out:
        return Outcome.TIMEOUT, f"timed out after {timeout:g}s"
    if oom_kills and returncode != 0:
        # The OOM killer's SIGKILL, not a bare signal 9 (nor the shell's exit code 137).
        limit = f", limit {memory_limit}" if memory_limit else ""
        return Outcome.OOM, f"killed: out of memory{limit}"
    xcpu = signal.SIGXCPU.value
    if cpu_limit_s is not None and returncode in (-xcpu, 128 + xcpu):
        return Outcome.SIGNALED, f"killed: CPU time limit ({cpu_limit_s}s, SIGXCPU)"
    if returncode < 0:
        return Outcome.SIGNALED, f"killed by signal {-returncode} {_signal_name(-returncode)}"
    if returncode == 0:
        return Outcome.COMPLETED, None
    if returncode == 127:
        return Outcome.NOT_FOUND, "command not found (exit code 127)"
    if returncode == 126:
        return Outcome.FAILED, "command not executable (exit code 126)"
    return Outcome.FAILED, f"exit code {returncode}"


def _signal_name(number: int) -> str:
    return signal.Signals(number).name if number in signal.valid_signals() else str(number)


def describe_resources(used: cgroup.Usage, contained: bool, limits: str | None) -> str:
    """The log header's ``Resources:`` line: what was used, how the job was contained."""
    parts = []
    if used.cpu_seconds is not None:
        parts.append(f"cpu {used.cpu_seconds:.3f}s")
    if used.peak_bytes is not None:
        parts.append(f"peak memory {human_size(used.peak_bytes)}")
    parts.append("contained by its cgroup" if contained else "contained by its process group")
    if limits:
        parts.append(f"limits: {limits}")
    return ", ".join(parts)


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
        self._output_bytes = 0  # followed output in the outbox
        self.followed: set[str] = set()  # jobs waiting for a slot whose output is wanted
        self._timers: list[Timer] = []
        self._cancelled = 0  # cancelled timers still in the heap
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

    def at(self, delay: float, action: Callable[[], None]) -> Timer:
        """Run ``action`` after ``delay`` seconds (from the loop)."""
        timer = Timer(time.monotonic() + delay, action)
        heapq.heappush(self._timers, timer)
        return timer

    def cancel(self, timers: list[Timer]) -> None:
        """Drop timers that are no longer wanted (a job's timeout once it has ended).

        A job's timeout can be days away: without this, every short job would leave an
        entry in the heap until then. The heap is compacted when most of it is dead.
        """
        for timer in timers:
            if timer.action is not None:
                timer.action = None
                self._cancelled += 1
        if self._cancelled > 256 and self._cancelled * 2 > len(self._timers):
            self._timers = [t for t in self._timers if t.action is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def _fire_timers(self) -> None:
        """Run the timers that are due."""
        while self._timers and self._timers[0].when <= time.monotonic():
            action = heapq.heappop(self._timers).action
            if action is None:
                self._cancelled -= 1
            else:
                action()

    def _next_timer(self) -> float:
        """Seconds until the next timer (infinity when there is none)."""
        if not self._timers:
            return math.inf
        return max(0.0, self._timers[0].when - time.monotonic())

    def _flush(self) -> None:
        if not self.outbox or self.closed:
            self.outbox.clear()
            return
        view = memoryview(pack_batch(self.outbox))
        self.outbox.clear()
        self._output_bytes = 0
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
            signum = int(msg.get("signal") or signal.SIGTERM)
            self._cancel(None if ids is None else set(ids), signum, bool(msg.get("killed")))
        elif kind == "retire":
            self.retiring = True
            self._revoke(None)
        elif kind == "follow":
            self._follow(str(msg["job_id"]), bool(msg["on"]))

    def _revoke_one(self, run: RunJob) -> None:
        self.followed.discard(run.job_id)
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

    def _cancel(
        self, ids: set[str] | None, signum: int = signal.SIGTERM, killed: bool = False
    ) -> None:
        self._revoke(ids)
        for attempt in list(self.running.values()):
            if ids is None or attempt.run.job_id in ids:
                if killed:
                    attempt.killed = signum
                else:
                    attempt.interrupted = True
                self._stop(attempt, signum)

    def on_sigterm(self) -> None:
        """SIGTERM reached the executor: end every job now, report them, exit."""
        self.terminated = True
        self._revoke(None)
        for attempt in list(self.running.values()):
            attempt.interrupted = True
            self._kill_tree(attempt)

    # -- starting jobs ----------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self.waiting and len(self.running) < self.slots and not self.terminated:
            self._start(self.waiting.popleft())

    def _start(self, run: RunJob) -> None:
        started = time.time()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        env = {
            **self.env,
            **(run.env or {}),
            "QUEUECTL_JOB_ID": run.job_id,
            "QUEUECTL_ATTEMPT": str(run.attempt),
        }
        try:
            group, note = self._make_cgroup(run)
        except _StartError as exc:
            os.close(out_r)
            os.close(err_r)
            os.close(out_w)
            os.close(err_w)
            self._report_unstarted(run, started, str(exc))
            return
        try:
            proc = self._spawn(run, out_w, err_w, env, group)
        except _StartError as exc:
            os.close(out_r)
            os.close(err_r)
            self.followed.discard(run.job_id)
            self._report_unstarted(run, started, str(exc))
            if group is not None:
                self._remove_cgroup(group)
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
            cgroup=group,
            pidfd=procs.open_pidfd(proc.pid),
            started_at=started,
            out=Capture(out_r, run.log_max_bytes, tmp_dir),
            err=Capture(err_r, run.log_max_bytes, tmp_dir),
        )
        if note is not None:
            attempt.extra.append(note)
        attempt.limits_note = run.limits_note
        self.running[run.job_id] = attempt
        self.outbox.append(JobStarted(run.job_id, run.attempt, proc.pid).to_wire())
        if run.job_id in self.followed:
            self.followed.discard(run.job_id)
            self._forward(attempt)
        read = selectors.EVENT_READ
        self.sel.register(out_r, read, lambda: self._on_output(attempt, attempt.out))
        self.sel.register(err_r, read, lambda: self._on_output(attempt, attempt.err))
        if attempt.pidfd is not None:
            self.sel.register(attempt.pidfd, read, lambda: self._on_exit(attempt))
        else:
            self._poll_exit(attempt)
        attempt.timers.append(self.at(run.timeout, lambda: self._on_timeout(attempt)))

    def _spawn(
        self, run: RunJob, out_w: int, err_w: int, env: dict[str, str], group: str | None
    ) -> procs.JobProcess:
        # Every time, even for the same path: the directory may have been replaced.
        try:
            os.chdir(run.cwd)
        except OSError as exc:
            raise _StartError(f"cannot enter working directory {run.cwd}: {exc.strerror}") from None
        procs_file = os.path.join(group, "cgroup.procs") if group else None
        rlimits = run.rlimits or []
        try:
            as_user = procs.identity_of(run.uid) if run.uid is not None else None
            return procs.spawn_job(run.command, out_w, err_w, env, as_user, procs_file, rlimits)
        except OSError as exc:
            raise _StartError(f"cannot start /bin/sh: {exc.strerror}") from None

    def _make_cgroup(self, run: RunJob) -> tuple[str | None, str | None]:
        """The attempt's cgroup, created (None: process group only), and why not."""
        if run.cgroup is None:
            return None, None
        try:
            cgroup.create(run.cgroup)
        except OSError as exc:
            return None, f"not contained: cannot create its cgroup ({exc.strerror})"
        try:
            cgroup.configure(run.cgroup, run.cgroup_files or {})
        except OSError as exc:
            cgroup.remove(run.cgroup)
            raise _StartError(f"cannot set the job's limits: {exc.strerror}") from None
        return run.cgroup, None

    def _kill_tree(self, attempt: Attempt) -> None:
        """SIGKILL everything of an attempt: its process group, and its whole cgroup."""
        procs.signal_group(attempt.pid, signal.SIGKILL)
        if attempt.cgroup is not None:
            cgroup.kill(attempt.cgroup)

    def _report_unstarted(self, run: RunJob, started: float, error: str) -> None:
        finished = time.time()
        try:
            write_log(run, started, finished, None, Outcome.ERROR, error, ())
        except OSError:
            pass
        self.outbox.append(
            JobFinished(
                run.job_id, run.attempt, Outcome.ERROR, None, error, started, finished
            ).to_wire()
        )

    # -- following a job's output -------------------------------------------------------

    def _follow(self, job_id: str, on: bool) -> None:
        """Start (with what is kept so far) or stop forwarding a job's output."""
        attempt = self.running.get(job_id)
        if attempt is None:
            if on and any(run.job_id == job_id for run in self.waiting):
                self.followed.add(job_id)
            else:
                self.followed.discard(job_id)  # finished, revoked or never sent here
            return
        if not on:
            attempt.out.sink = attempt.err.sink = None
            return
        for name, capture in (("stdout", attempt.out), ("stderr", attempt.err)):
            for offset, data, cut in capture.kept():
                self._send_output(attempt.run, name, offset, data, cut)
        self._forward(attempt)

    def _forward(self, attempt: Attempt) -> None:
        run = attempt.run
        attempt.out.sink = lambda offset, data: self._send_output(run, "stdout", offset, data)
        attempt.err.sink = lambda offset, data: self._send_output(run, "stderr", offset, data)

    def _send_output(
        self, run: RunJob, stream: str, offset: int, data: bytes, cut: bool = False
    ) -> None:
        msg = JobOutput(run.job_id, run.attempt, stream, offset, data, cut)
        self.outbox.append(msg.to_wire())
        self._output_bytes += len(data)
        if self._output_bytes >= OUTPUT_FLUSH_BYTES:
            self._flush()

    # -- a running job ------------------------------------------------------------------

    def _poll_exit(self, attempt: Attempt) -> None:
        """No pidfd on this kernel: look at the child every 50 ms."""
        if self._reap(attempt):
            self._exited(attempt)
        else:
            attempt.timers.append(self.at(0.05, lambda: self._poll_exit(attempt)))

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
        # The shell is gone; end whatever it left running, in its group and, contained,
        # anywhere. What is left in its pipes arrives as read events (EOF included).
        self._kill_tree(attempt)
        if attempt.done:
            self._finish(attempt)
        else:
            attempt.timers.append(self.at(PIPE_DRAIN_S, lambda: self._give_up_pipes(attempt)))

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

    def _stop(self, attempt: Attempt, signum: int = signal.SIGTERM) -> None:
        """``signum`` (SIGTERM) to the job's group, SIGKILL when the grace period ends."""
        if attempt.returncode is not None or attempt.stopping:
            return
        attempt.stopping = True
        procs.signal_group(attempt.pid, signum)

        def kill() -> None:
            if attempt.returncode is None:
                self._kill_tree(attempt)

        attempt.timers.append(self.at(attempt.run.kill_grace, kill))

    def _usage(self, attempt: Attempt) -> cgroup.Usage:
        """CPU time and peak memory: the cgroup's counts where present, else wait4's.

        wait4's peak is the largest single process of the job (its shell and the
        children it waited for); its CPU time leaves out processes nobody waited for.
        """
        counted = cgroup.usage(attempt.cgroup) if attempt.cgroup else cgroup.Usage(None, None, 0)
        ru = attempt.handle.rusage
        if ru is None:
            return counted
        cpu = counted.cpu_seconds
        if cpu is None:
            cpu = ru.ru_utime + ru.ru_stime
        peak = counted.peak_bytes if counted.peak_bytes is not None else ru.ru_maxrss * 1024
        return cgroup.Usage(round(cpu, 6), peak, counted.oom_kills)

    def _remove_cgroup(self, path: str, tries: int = 100) -> None:
        """Remove an attempt's cgroup once the killed have left it (checked every 20 ms)."""
        try:
            if cgroup.remove(path) or tries <= 0:
                return
        except OSError:
            return  # left for the next start's sweep
        self.at(0.02, lambda: self._remove_cgroup(path, tries - 1))

    def _finish(self, attempt: Attempt) -> None:
        run = attempt.run
        self.running.pop(run.job_id, None)
        self.cancel(attempt.timers)
        assert attempt.returncode is not None
        finished = time.time()
        used = self._usage(attempt)
        if attempt.cgroup is not None:
            cgroup.kill(attempt.cgroup)  # anything left (a job that exited by itself)
            self._remove_cgroup(attempt.cgroup)
        outcome, error = classify(
            attempt.returncode,
            attempt.timed_out,
            attempt.interrupted,
            run.timeout,
            attempt.killed,
            used.oom_kills,
            format_size(run.memory) if run.memory else None,
            limits.cpu_seconds_limit(run.rlimits),
        )
        exit_code = attempt.returncode if attempt.returncode >= 0 else None
        try:
            captures = (attempt.out, attempt.err)
            resources = describe_resources(used, attempt.cgroup is not None, attempt.limits_note)
            write_log(
                run, attempt.started_at, finished, exit_code, outcome, error, captures, resources
            )
        except OSError as exc:
            attempt.extra.append(f"job log not written: {exc.strerror}")
        finally:
            attempt.out.release()
            attempt.err.release()
        if error is None and attempt.extra:
            error = "; ".join(attempt.extra)
        self.outbox.append(
            JobFinished(
                run.job_id,
                run.attempt,
                outcome,
                exit_code,
                error,
                attempt.started_at,
                finished,
                used.cpu_seconds,
                used.peak_bytes,
            ).to_wire()
        )

    def _kill_all(self) -> None:
        """The daemon is gone: it will run these jobs again, so none may go on running."""
        for attempt in self.running.values():
            self._kill_tree(attempt)


class _StartError(Exception):
    pass


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
