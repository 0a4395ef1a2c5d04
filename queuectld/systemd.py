"""systemd integration without libsystemd: sd_notify, the watchdog, socket activation.

* :class:`Notifier` sends ``READY=1``, ``STATUS=``, ``STOPPING=1``, ``WATCHDOG=1`` ...
  datagrams to ``$NOTIFY_SOCKET`` (sd_notify(3)); without it every call is a no-op.
* :func:`watchdog_interval` reads ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` (sd_watchdog_enabled(3)).
* :class:`StatusReporter` keeps ``STATUS=`` current but rate-limited.
* :func:`listen_fds` / :func:`listening_socket` take the sockets systemd passed
  (``$LISTEN_FDS``/``$LISTEN_PID``, starting at fd 3; sd_listen_fds(3)).
* :func:`hide_from_children` keeps all of these away from workers and jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping

import structlog

log = structlog.get_logger("queuectld.systemd")

SD_LISTEN_FDS_START = 3

# Variables that describe the daemon's own relationship with systemd; a worker or a
# job that saw them could confuse systemd (a job's `systemd-notify --ready`) or
# believe a socket or the journal stream was meant for it.
PRIVATE_ENV = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
)


class Notifier:
    """Send sd_notify datagrams when ``NOTIFY_SOCKET`` is set; do nothing otherwise."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address and self.address[0] in "/@":
            if self.address.startswith("@"):  # abstract namespace
                self.address = "\0" + self.address[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd went away; the service must go on

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or None if not asked.

    As sd_watchdog_enabled(3): ``WATCHDOG_PID``, when set, must be our pid (the
    variables may have leaked from a parent that was the watched process).
    """
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


async def watchdog(
    notifier: Notifier, interval: float, probe: Callable[[], Awaitable[object]]
) -> None:
    """Ping only while both the event loop and what ``probe`` reaches answer.

    The pings come from the event loop itself, so a loop that hangs stops them. Each
    ping also needs the previous ``probe`` (the daemon passes a no-op run on the store
    thread) to have returned: a store thread wedged in a call stops the pings too, and
    systemd restarts the service. A probe that fails (a full disk) still returned: the
    thread is alive, and the error is the requests' to report.
    """
    pending: asyncio.Future[object] | None = None
    while True:
        if pending is None or pending.done():
            if pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: a failed probe is not a hang
            notifier.notify("WATCHDOG=1")
            pending = asyncio.ensure_future(probe())
        await asyncio.sleep(interval)


class StatusReporter:
    """Keeps ``STATUS=`` current: sent when something changed, at most once per ``interval``.

    :meth:`changed` is cheap (it sets a flag), so it can be called per job at any
    throughput; the (possibly costly) ``compose`` runs at most once per interval, and
    less often when it is slow (a count over a big queue), so that it never takes more
    than a twentieth of the time. Without changes it still runs every ``backstop``
    seconds, for what changes without telling (a worker retired).
    """

    def __init__(
        self,
        notifier: Notifier,
        compose: Callable[[], Awaitable[str]],
        interval: float = 1.0,
        backstop: float = 30.0,
    ) -> None:
        self.notifier = notifier
        self.compose = compose
        self.interval = interval
        self.backstop = backstop
        self.last = ""
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        self._dirty.set()

    def start(self) -> None:
        if self.notifier.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="sd-status")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def send(self, text: str) -> None:
        """Send ``text`` now (state changes such as draining, not counted ones)."""
        self.last = text
        self.notifier.notify(f"STATUS={text}")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.backstop)
            self._dirty.clear()
            started = time.monotonic()
            try:
                text = await self.compose()
            except Exception as exc:  # the store is busy or closing: try again later
                log.debug("status_not_composed", error=str(exc))
            else:
                if text != self.last:
                    self.send(text)
            took = time.monotonic() - started
            await asyncio.sleep(max(self.interval, 20 * took) - took)


def listen_fds(env: MutableMapping[str, str] | None = None, unset: bool = True) -> list[int]:
    """The file descriptors systemd passed us (socket activation), as sd_listen_fds(3).

    Only when ``LISTEN_PID`` is our pid: the variables may have been inherited from a
    parent they were meant for. With ``unset`` they are removed from the environment
    so that nothing we start believes the descriptors are its own.
    """
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds


def listening_socket(fd: int) -> socket.socket:
    """Wrap a passed descriptor; it must be a listening Unix stream socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"fd {fd} passed by systemd is not a socket: {exc.strerror}") from None
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or kind != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ValueError(
            f"fd {fd} passed by systemd is not a listening Unix stream socket "
            "(use ListenStream=/path in queuectld.socket, without Accept=yes)"
        )
    return sock


# The daemon's own settings (QUEUECTLD_*), the socket it was told to serve, and any
# queuectl token (QUEUECTL_*TOKEN*). QUEUECTL_HOME stays: a job's own `queuectl enqueue`
# reaches the daemon that runs it.
PRIVATE_PREFIX = "QUEUECTLD_"
PRIVATE_CLIENT_ENV = ("QUEUECTL_SOCKET",)


def _private(name: str) -> bool:
    return (
        name in PRIVATE_ENV
        or name in PRIVATE_CLIENT_ENV
        or name.startswith(PRIVATE_PREFIX)
        or (name.startswith("QUEUECTL") and "TOKEN" in name)
    )


def hide_from_children(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the variables that belong to the daemon alone."""
    return {k: v for k, v in env.items() if not _private(k)}
