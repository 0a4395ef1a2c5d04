"""The only code that starts processes or sends signals.

Every job runs as ``/bin/sh -c COMMAND`` in a new session (so a process group of its
own, led by the shell): stopping a job means signalling that whole group, which
takes its children and grandchildren with it.
"""

from __future__ import annotations

import os
import pwd
import resource
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from queuectld import limits

if TYPE_CHECKING:
    # Imported where used: an executor process never needs asyncio (about 7 MB each), nor
    # subprocess unless it runs a job as another user.
    import asyncio

SHELL = "/bin/sh"


@dataclass(frozen=True)
class Identity:
    """Who a job runs as when a root daemon runs it for another user."""

    uid: int
    gid: int
    groups: list[int]
    env: dict[str, str]


def identity_of(uid: int) -> Identity:
    """The user's primary group, supplementary groups and login variables (HOME, USER...)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        # A uid without a passwd entry still gets its own uid, and nothing more.
        return Identity(uid, uid, [], {"HOME": "/", "USER": str(uid), "LOGNAME": str(uid)})
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    return Identity(uid, pw.pw_gid, groups, env)


class JobProcess:
    """A started job shell; exit status as ``Popen.returncode`` gives it, and its rusage.

    Reaped with ``wait4``, so the attempt's CPU time and peak memory are known where no
    cgroup counts them. A shell started by ``Popen`` (a job run as another user) is kept
    here and reaped the same way; its ``returncode`` is set at once, so that its own
    clean-up never tries to reap it (and lose the status).
    """

    def __init__(self, pid: int, popen: Any = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.rusage: Any = None  # resource.struct_rusage once reaped
        self._popen = popen

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status, rusage = os.wait4(self.pid, flags)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere; Popen reports 0 the same way
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = rusage
                if self._popen is not None:
                    self._popen.returncode = self.returncode
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self) -> int:
        code = self._reap(0)
        assert code is not None
        return code


_devnull: int | None = None
# Python ignores these; Popen(restore_signals=True) gives the job the default back.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def shell_argv(command: str, cgroup_procs: str | None, ulimits: str = "") -> list[str]:
    """The argv of a job's shell: ``sh -c COMMAND``, after joining a cgroup and limits.

    A contained (or limited) job's shell first writes its own pid into the attempt's
    ``cgroup.procs`` and sets its rlimits, then runs the command: nothing of the job
    runs before the move, so no fork can escape it. The steps go in front of the
    command on its first line, so the shell parses that line whole before it runs
    anything (a syntax error runs nothing, as before) and line numbers in the job's
    error messages stay its own; no second shell is started.
    """
    steps = [f"echo $$ > {shlex.quote(cgroup_procs)}"] if cgroup_procs is not None else []
    steps += [ulimits] if ulimits else []
    if not steps:
        return [SHELL, "-c", command]
    return [SHELL, "-c", " && ".join(steps) + " || exit 125; " + command]


def spawn_job(
    command: str,
    stdout: int,
    stderr: int,
    env: dict[str, str],
    as_user: Identity | None = None,
    cgroup_procs: str | None = None,
    rlimits: Sequence[tuple[int, int]] = (),
) -> JobProcess:
    """Start ``sh -c command`` with stdin from /dev/null, leading a new process group.

    With ``as_user`` (only possible for a root worker) the shell runs with that user's
    uid, gid and supplementary groups, and its HOME/USER/LOGNAME. With ``cgroup_procs``
    the shell is in that cgroup before the command runs, and ``rlimits`` are set (see
    :func:`shell_argv`; a job run as another user is moved and limited while still
    root, in the child before ``exec``).

    The common case uses ``posix_spawn`` (a vfork-like clone, no Python in the child):
    what ``Popen(start_new_session=True, restore_signals=True)`` does, several times
    cheaper. Every descriptor the executor opens is close-on-exec (Python's default), so
    the job inherits only the three it is given.
    """
    if as_user is None:
        global _devnull
        if _devnull is None:
            _devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        pid = os.posix_spawn(
            SHELL,
            shell_argv(command, cgroup_procs, limits.ulimit_script(list(rlimits))),
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, _devnull, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
            ],
            setsid=True,
            setsigdef=_RESTORED_SIGNALS,
        )
        return JobProcess(pid)
    import subprocess

    identity = as_user
    drop: dict[str, Any] = {
        "user": identity.uid,
        "group": identity.gid,
        "extra_groups": identity.groups,
    }

    def join_then_drop() -> None:
        if cgroup_procs is not None:
            fd = os.open(cgroup_procs, os.O_WRONLY)
            os.write(fd, b"0")  # "0": the writing process itself
            os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, limits.soft_and_hard(which, value))
        os.setgroups(identity.groups)
        os.setgid(identity.gid)
        os.setuid(identity.uid)

    if cgroup_procs is not None or rlimits:
        # The user could not write cgroup.procs (nor raise a limit back): the child
        # moves and limits itself while still root, then drops to the user (Popen's own
        # user= would drop before a preexec_fn runs). The executor is single-threaded,
        # so a preexec_fn is safe here.
        drop = {"preexec_fn": join_then_drop}
    popen = subprocess.Popen(
        [SHELL, "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env={**env, **as_user.env},
        start_new_session=True,
        close_fds=True,
        **drop,
    )
    return JobProcess(popen.pid, popen)


QUEUE_TAG = "QUEUECTL_STORE"


def find_job_groups(queue: str, job_ids: set[str] | None = None) -> set[int]:
    """Process groups of jobs started by the queue ``queue`` (its database path).

    Every job carries ``QUEUECTL_STORE`` (its daemon's database) and ``QUEUECTL_JOB_ID``
    in its environment.
    This finds jobs whose executor died before it could report their process group, and
    jobs left running by a daemon and executors killed together, so they can be stopped
    before the queue hands the same job out again. A job that scrubs its environment
    escapes this; a job's own process group (SIGKILL by pgid) is the primary means.
    """
    tag = f"{QUEUE_TAG}={queue}".encode()
    groups: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            pgid = os.getpgid(int(entry))
        except OSError:
            continue  # gone, or not ours to read
        if tag not in env:
            continue
        if job_ids is not None:
            ids = {v[len(b"QUEUECTL_JOB_ID=") :] for v in env if v.startswith(b"QUEUECTL_JOB_ID=")}
            if not ids & {i.encode() for i in job_ids}:
                continue
        groups.add(pgid)
    groups.discard(os.getpgid(0))
    return groups


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def open_pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when ``pid`` exits (None if unsupported)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


async def spawn_executor(env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start one executor process, talking frames over its stdin/stdout pipes.

    Executors get a session of their own so a Ctrl-C meant for a foreground daemon does
    not reach them; the daemon decides when they stop.
    """
    import asyncio

    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "queuectld.executor",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


SIGKILL = signal.SIGKILL


def kill_process(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal one process (an executor); a process already gone is not an error."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
