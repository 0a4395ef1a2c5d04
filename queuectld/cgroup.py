"""Containment: a cgroup v2 directory per attempt, so nothing a job starts outlives it.

A job's shell joins its attempt's cgroup before it runs the command (the executor
starts ``sh -c 'echo $$ > …/cgroup.procs && exec sh -c COMMAND'``, or, for a job run as
another user, writes the pid as root before dropping privileges), so every process the
job ever forks is inside it, whatever its process group, session or environment.
Ending an attempt is then one write: ``1`` to its ``cgroup.kill``.

Where the attempt directories go (:func:`discover`):

* ``cgroup = "/path"`` in the configuration: a cgroup v2 directory the daemon may
  write (delegated to it); the queue's directory is made inside it;
* under systemd with ``Delegate=yes``: the daemon moves itself into a ``daemon`` leaf
  of its own cgroup and puts the jobs in a ``jobs`` directory beside it;
* a root daemon outside systemd, with a cgroup v2 hierarchy mounted and writable
  (``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` beside v1 controllers): a
  ``queuectl`` directory under its own cgroup there;
* otherwise none: jobs are stopped by process group, as before (``cgroup = "off"``
  asks for that).

Each queue (database) gets a directory of its own (a hash of its path), so the
restarted daemon finds and ends whatever its killed predecessor left running.
The functions that read files or decide are pure; those that write say so.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from dataclasses import dataclass

PROC_CGROUP = "/proc/self/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
# Controllers the limits use, in the order they are enabled.
WANTED = ("cpu", "memory", "pids")
OFF = "off"


@dataclass(frozen=True)
class Containment:
    """Which containment is in force for a queue's jobs."""

    base: str | None  # the queue's directory of attempt cgroups; None: process groups only
    controllers: frozenset[str] = frozenset()  # delegated to the attempt cgroups
    why: str = ""  # how it was found, or why there is none
    # The highest cgroup that is ours to configure (controllers are enabled from here
    # down): the delegated one, or the hierarchy's root for a root daemon.
    top: str | None = None

    def describe(self) -> str:
        """One line for ``--print-config`` and the startup log."""
        if self.base is None:
            return f"process groups ({self.why})"
        ctl = ", ".join(sorted(self.controllers)) or "none"
        return f"a cgroup per attempt under {self.base} ({self.why}; controllers: {ctl})"


@dataclass(frozen=True)
class Usage:
    """What an attempt used, read from its cgroup before it is removed."""

    cpu_seconds: float | None  # user + system, every process of the attempt
    peak_bytes: int | None  # memory.peak (needs the memory controller)
    oom_kills: int  # processes the OOM killer ended inside the attempt


# -- finding a place --------------------------------------------------------------------


def own_cgroup(text: str) -> str | None:
    """The unified (v2) cgroup path in a ``/proc/<pid>/cgroup`` text, or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def cgroup2_mount(mountinfo: str) -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` first), or None."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) > 4 and fields[3] == "/":
            mounts.append(fields[4].replace("\\040", " "))
    return min(mounts, key=lambda m: (m != "/sys/fs/cgroup", len(m)), default=None)


def queue_dir_name(queue_tag: str) -> str:
    """The directory of one queue's attempts: stable across restarts, unique per database."""
    return "q-" + hashlib.sha256(queue_tag.encode()).hexdigest()[:16]


def attempt_path(base: str, job_id: str, attempt: int) -> str:
    """The cgroup of one attempt (job ids are limited to a file-name-safe alphabet)."""
    return os.path.join(base, f"{job_id}.{attempt}")


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _delegated(path: str) -> bool:
    """systemd marks a cgroup it delegated (``Delegate=yes``) with an extended attribute."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def discover(
    configured: str,
    queue_tag: str,
    env: dict[str, str] | None = None,
    proc_cgroup: str | None = None,
    mountinfo: str | None = None,
) -> Containment:
    """Where this daemon can put its jobs' cgroups (nothing is created here)."""
    env = dict(os.environ) if env is None else env
    if configured == OFF:
        return Containment(None, why="cgroup = off")
    name = queue_dir_name(queue_tag)
    if configured:
        if not _writable_cgroup(configured):
            return Containment(None, why=f"{configured} is not a writable cgroup v2 directory")
        return Containment(os.path.join(configured, name), why="configured", top=configured)
    try:
        proc_cgroup = _read(PROC_CGROUP) if proc_cgroup is None else proc_cgroup
        mountinfo = _read(MOUNTINFO) if mountinfo is None else mountinfo
    except OSError:
        return Containment(None, why="no /proc/self/cgroup")
    own, mount = own_cgroup(proc_cgroup), cgroup2_mount(mountinfo)
    if own is None or mount is None:
        return Containment(None, why="no cgroup v2 hierarchy is mounted")
    own_dir = os.path.normpath(mount + own)
    if env.get("INVOCATION_ID") and own != "/":
        # A systemd service: only a delegated cgroup is ours to divide.
        if not _delegated(own_dir) or not _writable_cgroup(own_dir):
            return Containment(None, why="systemd did not delegate a cgroup (Delegate=yes)")
        base = os.path.join(own_dir, "jobs", name)
        return Containment(base, why="systemd, Delegate=yes", top=own_dir)
    if os.geteuid() != 0 or not _writable_cgroup(own_dir):
        return Containment(None, why=f"{own_dir} is not writable (not root, not delegated)")
    base = os.path.join(own_dir, "queuectl", name)
    return Containment(base, why=f"root, {mount}", top=mount)


def _writable_cgroup(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.procs")) and os.access(path, os.W_OK)


# -- setting it up (writes) ---------------------------------------------------------------


def prepare(found: Containment) -> Containment:
    """Create the queue's directory and enable what controllers can be; the result in force.

    Under systemd the daemon first moves itself into a ``daemon`` leaf of its cgroup
    (a cgroup with processes cannot hand controllers to its children). A directory that
    cannot be made leaves process groups in force, with the reason.
    """
    base = found.base
    if base is None:
        return found
    try:
        if found.why.startswith("systemd"):
            own_dir = os.path.dirname(os.path.dirname(base))
            leaf = os.path.join(own_dir, "daemon")
            os.makedirs(leaf, exist_ok=True)
            _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        os.makedirs(base, exist_ok=True)
    except OSError as exc:
        return Containment(None, why=f"cannot create {base}: {exc.strerror}")
    # Enable each wanted controller on the way down from the hierarchy's top, where it
    # is offered; a controller held by a v1 hierarchy is simply not offered.
    chain = [base]
    while chain[-1] != found.top and len(chain[-1]) > len(found.top or "/"):
        chain.append(os.path.dirname(chain[-1]))
    for path in reversed(chain):
        _enable(path)
    try:
        offered = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
    except OSError:
        offered = set()
    return Containment(base, frozenset(offered & set(WANTED)), found.why, found.top)


def _enable(path: str) -> None:
    try:
        offered = set(_read(os.path.join(path, "cgroup.controllers")).split())
    except OSError:
        return
    for name in WANTED:
        if name in offered:
            try:
                _write(os.path.join(path, "cgroup.subtree_control"), f"+{name}")
            except OSError:
                pass  # busy (processes inside), or refused: the limit falls back


# -- one attempt (writes) -------------------------------------------------------------------


def create(path: str) -> None:
    """Make an attempt's cgroup (an old one of the same name is ended and reused)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        kill(path)


def configure(path: str, files: dict[str, str]) -> None:
    """Write an attempt's limit files (``memory.max``...) before anything joins it."""
    for name, value in files.items():
        _write(os.path.join(path, name), value)


def kill(path: str) -> bool:
    """SIGKILL every process in the cgroup; False if it no longer exists.

    ``cgroup.kill`` (Linux 5.14) does it atomically, forks in flight included; before
    it, the members are signalled until none is left.
    """
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
        return True
    except FileNotFoundError:
        if not os.path.isdir(path):
            return False
    except OSError:
        pass
    for _ in range(100):  # a fork bomb refills the list: bounded, like the kernel's loop
        try:
            pids = [int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()]
        except OSError:
            return False
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return True


def populated(path: str) -> bool:
    """True while any process is in the cgroup."""
    try:
        return "populated 1" in _read(os.path.join(path, "cgroup.events"))
    except OSError:
        return False


def usage(path: str) -> Usage:
    """CPU time, peak memory and OOM kills of an attempt (what its files offer)."""
    cpu: float | None = None
    peak: int | None = None
    ooms = 0
    try:
        for line in _read(os.path.join(path, "cpu.stat")).splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu = int(value) / 1e6
    except (OSError, ValueError):
        pass
    try:
        peak = int(_read(os.path.join(path, "memory.peak")))
    except (OSError, ValueError):
        pass
    try:
        for line in _read(os.path.join(path, "memory.events")).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                ooms = int(value)
    except (OSError, ValueError):
        pass
    return Usage(cpu, peak, ooms)


def remove(path: str) -> bool:
    """Remove an attempt's cgroup; False while processes are still leaving it."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


def sweep_one(path: str, wait: float = 2.0) -> None:
    """Remove a killed attempt's cgroup once its processes have left (up to ``wait`` s)."""
    deadline = time.monotonic() + wait  # the killed leave within milliseconds
    try:
        while not remove(path) and time.monotonic() < deadline:
            time.sleep(0.005)
    except OSError:
        pass  # not a cgroup (a stray file): left alone


def sweep(base: str) -> list[str]:
    """End and remove every attempt cgroup left in ``base``; the ones that held processes.

    At start-up no attempt of this queue can be running legitimately: whatever a killed
    daemon and its executors left behind is ended before the jobs run again.
    """
    ended: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return ended
    for name in names:
        path = os.path.join(base, name)
        if not os.path.isdir(path):
            continue
        if populated(path):
            ended.append(name)
        kill(path)
    for name in names:
        sweep_one(os.path.join(base, name))
    return ended
