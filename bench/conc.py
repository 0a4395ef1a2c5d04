"""Concurrency: N long ``sleep`` jobs running at once, queuectl beside task-spooler ``-S N``.

For each system and each N the jobs are queued while nothing may run them (queuectl:
workers at 0; task-spooler: one slot held by a blocker job), then one command lets N of
them run (``queuectl worker start --count N``; ``tsp -S N`` and the blocker released),
and the clock runs from that command until N job processes exist. Then, with all of them
running:

- memory of the queue's own processes, from ``/proc/PID/smaps_rollup``, RSS and PSS
  summed. queuectl: the daemon and its worker/executor processes (the processes under it
  whose command line has ``-m queuectld.worker`` or ``-m queuectld.executor``), never the
  jobs' shells or their children. task-spooler: its server and the client process it
  keeps for every queued or running job (the server alone is reported beside it);
- CPU those processes use per second of wall time (``utime + stime`` from
  ``/proc/PID/stat`` over a window, in % of one CPU).

A *job process* is a child of one of the queue's processes that is not itself one and has
already called ``exec`` (its command line differs from its parent's), so a forked child
still on its way to ``/bin/sh`` does not count as running.

Every wait is bounded: the ramp stops after ``ramp_timeout`` seconds (or when the
machine runs low on memory) and reports how many jobs were running by then. Every job
process seen is killed (by process group) when the point ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench import peers, qc
from bench.core import log, rss_kb, temp_dir, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Arguments that mark one of queuectl's own processes (today ``python -m queuectld.worker``;
# the executor engine's ``python -m queuectld.executor``). Matched as whole arguments, so
# a job whose command merely mentions them is not taken for one.
QUEUE_MARKERS = (b"queuectld.worker", b"queuectld.executor")
RAMP_TIMEOUT = 60.0
POLL_S = 0.002  # least pause between two counts of the running jobs
SETTLE = 1.0  # seconds between "all running" and the memory reading
# The ramp stops early when the machine's available memory falls below this share.
MIN_MEM_AVAILABLE = 0.15


# -- /proc ------------------------------------------------------------------------------


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def cmdline(pid: int) -> bytes | None:
    return _read(f"/proc/{pid}/cmdline")


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    return raw[raw.rfind(b")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list; cheaper than core.children_of)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tasks:
        raw = _read(f"/proc/{pid}/task/{tid}/children")
        if raw:
            out += [int(p) for p in raw.split()]
    return out


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process, in clock ticks (None if it is gone)."""
    f = _stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else None


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot): tells a reused pid apart."""
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def mem_available_share() -> float:
    info: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or b"").decode().splitlines():
        key, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            info[key] = int(rest.split()[0])
    total = info.get("MemTotal") or 0
    return info.get("MemAvailable", total) / total if total else 1.0


def memory(pids: Iterable[int]) -> dict[str, Any]:
    """RSS and PSS (MiB) of ``pids`` summed, and how many of them were still there."""
    sizes = [s for s in (rss_kb(p) for p in pids) if s != (0, 0)]
    return {
        "rss_mb": sum(s[0] for s in sizes) / 1024,
        "pss_mb": sum(s[1] for s in sizes) / 1024,
        "max_rss_mb": max((s[0] for s in sizes), default=0) / 1024,
        "processes": len(sizes),
    }


def cpu_percent(groups: dict[str, list[int]], window: float) -> dict[str, float]:
    """CPU of each group of processes over ``window`` s, in % of one CPU.

    Every process is read once at each end, for all groups alike, and the time between
    the two readings is taken from the middle of one pass over ``/proc`` to the middle of
    the other. Only processes present at both ends count (the set is meant to be stable
    while the jobs run).
    """
    pids = sorted({p for members in groups.values() for p in members})

    def one_pass() -> tuple[dict[int, int | None], float]:
        t0 = time.perf_counter()
        ticks = {p: cpu_ticks(p) for p in pids}
        return ticks, (t0 + time.perf_counter()) / 2

    before, t_before = one_pass()
    time.sleep(window)
    after, t_after = one_pass()
    elapsed = t_after - t_before
    out: dict[str, float] = {}
    for name, members in groups.items():
        used = 0
        for p in members:
            a, b = before[p], after[p]
            if a is not None and b is not None:
                used += b - a
        out[name] = 100.0 * used / CLK_TCK / elapsed
    return out


# -- job processes ------------------------------------------------------------------------


class Tracked:
    """Processes seen so far (pid -> start time), and the cleanup that ends them."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def add(self, pid: int) -> bool:
        started = start_time(pid)
        if started is None:
            return False
        self.seen[pid] = started
        return True

    def alive(self) -> list[int]:
        """Those seen that still exist (zombies, already dead, are not counted)."""
        out = []
        for pid, started in self.seen.items():
            f = _stat_fields(pid)
            if f and int(f[19]) == started and f[0] not in (b"Z", b"X"):
                out.append(pid)
        return out

    def kill(self, groups: bool, timeout: float = 10.0) -> int:
        """SIGKILL each one still there (its process group if ``groups``); how many were."""
        left = self.alive()
        for pid in left:
            with contextlib.suppress(OSError):
                pgid = os.getpgid(pid)
                if groups and pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.alive(), timeout, interval=0.05)
        return len(left)


def sweep(tag: str, grace: float = 2.0, timeout: float = 10.0) -> int:
    """SIGKILL (by process group) every process whose environment holds ``tag`` exactly,
    once they had ``grace`` seconds to end by themselves; returns how many were killed.

    The last cleanup of a point: jobs inherit the queue's environment (``QUEUECTL_HOME``
    of the point's fresh home, task-spooler's ``TS_SOCKET``), so this finds any process of
    the point that the benchmark never saw, e.g. a job started while it was shutting down.
    """
    want = tag.encode()

    def matching() -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                env = _read(f"/proc/{entry}/environ")
                f = _stat_fields(int(entry)) if env and want in env.split(b"\0") else None
                if f and f[0] not in (b"Z", b"X"):
                    out.append(int(entry))
        return out

    wait_for(lambda: not matching(), grace, interval=0.05)
    found = matching()
    for pid in found:
        with contextlib.suppress(OSError):
            pgid = os.getpgid(pid)
            if pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    if found:
        wait_for(lambda: not matching(), timeout, interval=0.05)
    return len(found)


class Jobs(Tracked):
    """Job processes: children of the queue's processes that have called ``exec``."""

    def is_job(self, pid: int, parent_cmdline: bytes | None) -> bool:
        if pid in self.seen:
            return True
        mine = cmdline(pid)
        if not mine or mine == parent_cmdline:  # gone, a zombie, or not exec'd yet
            return False
        return self.add(pid)

    def kill_groups(self) -> int:
        return self.kill(groups=True)


def ramp(
    start: Callable[[], None], running: Callable[[], int], n: int, timeout: float
) -> dict[str, Any]:
    """Seconds from ``start()`` until ``running()`` reaches ``n``, polled (``poll_ms``: the mean
    interval between two counts, so the resolution of ``ramp_s``).

    Gives up after ``timeout`` s, or when available memory falls below
    ``MIN_MEM_AVAILABLE``; then ``ramp_s`` is None and ``running`` says how far it got.
    """
    t0 = time.perf_counter()
    start()
    count, stopped, polls = 0, None, 0
    next_mem_check = 0.0
    while True:
        before = time.perf_counter()
        count = running()
        polls += 1
        now = time.perf_counter() - t0
        cost = time.perf_counter() - before
        if count >= n:
            break
        if now > timeout:
            stopped = f"timeout after {timeout:g} s"
            break
        if now >= next_mem_check:
            next_mem_check = now + 0.25
            if mem_available_share() < MIN_MEM_AVAILABLE:
                stopped = f"stopped at {now:.1f} s: under {MIN_MEM_AVAILABLE:.0%} memory left"
                break
        # A count walks /proc: pausing 3 times as long keeps the bench under a quarter of a
        # CPU however many processes it walks (a ramp is often CPU-bound on 2 cores).
        time.sleep(max(POLL_S, 3 * cost))
    return {
        "ramp_s": now if stopped is None else None,
        "running": count,
        "stopped": stopped,
        "poll_ms": 1000 * now / polls,
    }


# -- queuectl -------------------------------------------------------------------------------


JOB_ENV = b"QUEUECTL_JOB_ID="  # every job inherits it (docs/guarantees.md)


class QueuectlTree:
    """The daemon, the queue processes under it and the jobs they run.

    Walking down from the daemon, a child is

    - a job if its environment has ``QUEUECTL_JOB_ID`` (set for the job's ``exec``, so a
      child on its way there is not one yet); the walk stops there;
    - a queue process if its arguments include ``queuectld.worker`` or
      ``queuectld.executor``, or if they are its parent's (forked and not exec'd: a job
      about to start, or an executor forked without ``exec``); the walk goes on below;
    - anything else is *other*: reported apart (count and memory), walked below too, so
      that a helper process the engine may grow shows up rather than hides jobs.
    """

    def __init__(self, daemon_pid: int) -> None:
        self.daemon = daemon_pid
        self.jobs = Jobs()
        self.queue = Tracked()  # every queue (and other) process seen, for the cleanup
        self._marked: dict[int, bytes] = {}  # worker/executor pid -> its arguments

    def _kind(self, pid: int, parent_cmdline: bytes | None) -> tuple[str, bytes | None]:
        if pid in self.jobs.seen:
            return "job", None
        if pid in self._marked:
            return "queue", self._marked[pid]
        line = cmdline(pid)
        if not line:
            return "gone", None  # exited (a zombie) or in the middle of exec
        env = _read(f"/proc/{pid}/environ") or b""
        if env.startswith(JOB_ENV) or b"\0" + JOB_ENV in env:
            self.jobs.add(pid)
            return "job", None
        self.queue.add(pid)
        if line == parent_cmdline:  # not exec'd yet: decided again at the next count
            return "queue", line
        if any(m in line.split(b"\0") for m in QUEUE_MARKERS):
            self._marked[pid] = line
            return "queue", line
        return "other", line

    def scan(self) -> tuple[list[int], int, list[int]]:
        """(queue processes, running jobs, other processes) under the daemon."""
        queue, jobs, other = [self.daemon], 0, list[int]()
        todo = [(self.daemon, cmdline(self.daemon))]
        while todo:
            pid, line = todo.pop()
            for child in children(pid):
                kind, child_line = self._kind(child, line)
                if kind == "job":
                    jobs += 1
                elif kind in ("queue", "other"):
                    (queue if kind == "queue" else other).append(child)
                    todo.append((child, child_line))
        return queue, jobs, other


class _Command:
    """A command started at the ramp's start, whose end is timed in the background."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd, self.env = cmd, env
        self.t0 = 0.0
        self.ended: float | None = None
        self.proc: subprocess.Popen[bytes]

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._wait, daemon=True).start()

    def kill(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _wait(self) -> None:
        self.proc.wait()
        self.ended = time.perf_counter()

    def outcome(self, timeout: float) -> dict[str, Any]:
        """How long it took and how it ended (it is killed if still running after ``timeout``)."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            return {"start_cmd_s": None, "start_error": f"{self.cmd[1:]} still running: killed"}
        ended = self.ended or time.perf_counter()
        error = None
        if self.proc.returncode != 0:
            last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
            error = (
                f"`{' '.join(['queuectl', *self.cmd[1:]])}` exited with "
                f"{self.proc.returncode} after {ended - self.t0:.1f} s: {last[:200]}"
            )
        return {"start_cmd_s": ended - self.t0, "start_error": error}


def queuectl_point(n: int, sleep_s: int, window: float, ramp_timeout: float) -> dict[str, Any]:
    """One concurrency point of queuectl (see the module's docstring)."""
    # A short drain on shutdown: the running jobs are stopped after 1 s, not 30.
    settings = {"QUEUECTLD_DRAIN_TIMEOUT": "1", "QUEUECTLD_KILL_GRACE": "1"}
    tree: QueuectlTree | None = None
    cli: _Command | None = None
    home = None
    try:
        with qc.daemon(workers=0, env=settings) as d:
            home = d.home
            tree = QueuectlTree(d.proc.pid)
            spec = {"command": f"sleep {sleep_s}", "timeout": sleep_s + 60}
            with d.client() as c:
                for first in range(0, n, 10_000):
                    c.enqueue_batch([spec] * min(n - first, 10_000))
                if qc.counts(c)["pending"] != n:
                    raise RuntimeError("jobs were not all pending before the ramp")
            cmd = [str(qc.BIN / "queuectl"), "worker", "start", "--count", str(n)]
            cli = _Command(cmd, d.env)
            t = tree
            out = ramp(cli.start, lambda: t.scan()[1], n, ramp_timeout)
            time.sleep(SETTLE)
            queue, running, other = tree.scan()
            out["running_measured"] = running
            out.update(memory(queue))
            if other:  # neither a job nor a known queue process: say so, with its size
                sizes = memory(other)
                out["other"] = {k: sizes[k] for k in ("processes", "rss_mb", "pss_mb")}
                out["other"]["cmdlines"] = sorted(
                    {
                        (cmdline(p) or b"").replace(b"\0", b" ").decode(errors="replace")[:80]
                        for p in other
                    }
                )[:5]
                log(f"queuectl {n}: {len(other)} process(es) neither job nor queue: {out['other']}")
            out["daemon_rss_mb"], out["daemon_pss_mb"] = (x / 1024 for x in rss_kb(d.proc.pid))
            out["executors"] = len(queue) - 1
            cpu = cpu_percent({"all": queue, "daemon": [d.proc.pid]}, window)
            out["cpu_pct"], out["cpu_daemon_pct"] = cpu["all"], cpu["daemon"]
            out["jobs_seen"] = len(tree.jobs.seen)
            out.update(cli.outcome(timeout=max(1.0, ramp_timeout - (time.perf_counter() - cli.t0))))
            log(_line("queuectl", n, out))
            if out["start_error"]:
                log(f"queuectl {n}: {out['start_error']}")
            return out
    finally:
        if cli is not None:
            cli.kill()
        if tree is not None:
            jobs_left, queue_left = tree.jobs.kill_groups(), tree.queue.kill(groups=False)
            unseen = sweep(f"QUEUECTL_HOME={home}") if home else 0
            if jobs_left or queue_left or unseen:
                log(
                    f"queuectl {n}: killed {jobs_left} job(s), {queue_left} worker(s) and "
                    f"{unseen} other process(es) left after the shutdown"
                )


# -- task-spooler -------------------------------------------------------------------------


def _tsp_processes(exe: str, socket: str) -> list[int]:
    """task-spooler's processes of one queue: its binary, with our TS_SOCKET."""
    real = os.path.realpath(exe)
    tag = f"TS_SOCKET={socket}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/exe") != real:
                continue
        except OSError:
            continue
        env = _read(f"/proc/{entry}/environ")
        if env and tag in env.split(b"\0"):
            out.append(int(entry))
    return out


def _listening_inode(socket: str) -> str | None:
    for line in (_read("/proc/net/unix") or b"").decode(errors="replace").splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[7] == socket and int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON
            return f[6]
    return None


def _tsp_server(pids: list[int], socket: str) -> int | None:
    """The one of ``pids`` that holds the queue's listening socket."""
    inode = _listening_inode(socket)
    if inode is None:
        return None
    want = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        return pid
    return None


def tsp_point(n: int, sleep_s: int, window: float, ramp_timeout: float) -> dict[str, Any]:
    """One concurrency point of task-spooler with ``-S N``, measured as queuectl's is.

    task-spooler keeps a connection per queued job and refuses more than about 990
    (``TS_MAXCONN`` can only lower that); jobs are queued with ``-B`` (refuse rather than
    block) and a refused one ends the queueing: ``jobs`` says how many ran.
    """
    exe = peers.tsp_binary()
    assert exe is not None
    jobs = Jobs()
    with temp_dir("tsp-conc") as d:
        socket = str(d / "tsp.sock")
        env = {**os.environ, "TS_SOCKET": socket, "TMPDIR": str(d)}
        try:
            with peers.Release(d, 1) as release:
                return _tsp_measure(
                    exe, env, socket, release, jobs, n, sleep_s, window, ramp_timeout
                )
        finally:
            _tsp_cleanup(exe, env, jobs, socket)


def _tsp_measure(
    exe: str,
    env: dict[str, str],
    socket: str,
    release: peers.Release,
    jobs: Jobs,
    n: int,
    sleep_s: int,
    window: float,
    ramp_timeout: float,
) -> dict[str, Any]:
    peers._quiet([exe, "-S", "1"], env)
    peers._quiet([exe, *release.blocker(0)], env)
    queued = 0
    for _ in range(n):
        r = subprocess.run(
            [exe, "-B", "sleep", str(sleep_s)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        if r.returncode == 2:  # "queue full"
            break
        if r.returncode != 0:
            raise RuntimeError(f"tsp failed ({r.returncode}): {r.stderr.decode()[:200]}")
        queued += 1
    processes = _tsp_processes(exe, socket)
    server = _tsp_server(processes, socket)
    # Only the blocker runs yet: its client is the one with a child, and is left out.
    wait_for(lambda: any(children(p) for p in processes if p != server), 5.0)
    clients = {p: cmdline(p) for p in processes if p != server and not children(p)}

    started: set[int] = set()  # clients whose job is running: a client runs one job

    def running() -> int:
        for p, line in clients.items():
            if p not in started and any(jobs.is_job(c, line) for c in children(p)):
                started.add(p)
        return len(started)

    def start() -> None:
        peers._quiet([exe, "-S", str(n)], env)
        release.go()

    out = ramp(start, running, queued, ramp_timeout)
    out["jobs"] = queued
    if queued < n:
        out["refused_after"] = queued
    time.sleep(SETTLE)
    out["running_measured"] = sum(  # counted afresh: jobs still there, not jobs seen
        1
        for p, line in clients.items()
        if any(cmdline(c) not in (None, b"", line) for c in children(p))
    )
    own = [p for p in processes if start_time(p) is not None]  # the blocker's client has left
    out.update(memory(own))
    if server is not None:
        out["server_rss_mb"], out["server_pss_mb"] = (x / 1024 for x in rss_kb(server))
    cpu = cpu_percent({"all": own, "server": [server] if server else []}, window)
    out["cpu_pct"] = cpu["all"]
    out["cpu_server_pct"] = cpu["server"] if server else None
    out["jobs_seen"] = len(jobs.seen)
    log(_line("task-spooler", n, out))
    return out


def _tsp_cleanup(exe: str, env: dict[str, str], jobs: Jobs, socket: str) -> None:
    """End the jobs (their groups), the server (``-K``), then anything with our TS_SOCKET.

    ``tsp -K`` ends the server and the clients of queued jobs, not running jobs; and a
    job may start between the last count and the end (the blocker is released on the way
    out): every process that inherited this queue's ``TS_SOCKET`` goes, job or client.
    """
    jobs.kill_groups()
    subprocess.run([exe, "-K"], env=env, capture_output=True, timeout=30)
    left = sweep(f"TS_SOCKET={socket}")
    if left:
        log(f"task-spooler: killed {left} process(es) left after tsp -K")


def _line(name: str, n: int, r: dict[str, Any]) -> str:
    ramp_s = f"{r['ramp_s']:.2f} s" if r["ramp_s"] is not None else r["stopped"]
    return (
        f"{name} {n} concurrent: {r['running']} running, ramp {ramp_s}; "
        f"{r['processes']} processes, PSS {r['pss_mb']:.1f} MB, RSS {r['rss_mb']:.1f} MB; "
        f"CPU {r['cpu_pct']:.1f} %"
    )


def sleep_seconds(ramp_timeout: float) -> int:
    """A job long enough to outlast the slowest ramp allowed and the readings after it."""
    return max(30, int(ramp_timeout) + 60)
