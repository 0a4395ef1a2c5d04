"""The only code that starts processes or sends signals.

Every job runs as ``/bin/sh -c COMMAND`` in a new session (so a process group of its
own, led by the shell): stopping a job means signalling that whole group, which
takes its children and grandchildren with it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
from dataclasses import dataclass

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


def spawn_job(
    command: str,
    stdout: int,
    stderr: int,
    env: dict[str, str],
    as_user: Identity | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``sh -c command`` with stdin from /dev/null, leading a new process group.

    With ``as_user`` (only possible for a root worker) the shell runs with that user's
    uid, gid and supplementary groups, and its HOME/USER/LOGNAME.
    """
    if as_user is None:
        return subprocess.Popen(
            [SHELL, "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    return subprocess.Popen(
        [SHELL, "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env={**env, **as_user.env},
        start_new_session=True,
        close_fds=True,
        user=as_user.uid,
        group=as_user.gid,
        extra_groups=as_user.groups,
    )


def signal_group(pgid: int, sig: signal.Signals) -> bool:
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


async def spawn_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start one worker process, talking frames over its stdin/stdout pipes.

    Workers get a session of their own so a Ctrl-C meant for a foreground daemon does
    not reach them; the daemon decides when they stop.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "queuectld.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


def kill_process(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal one process (a worker); a process already gone is not an error."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
