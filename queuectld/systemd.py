"""systemd integration: sd_notify messages (READY, STATUS, STOPPING, WATCHDOG)."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Send sd_notify datagrams when ``NOTIFY_SOCKET`` is set; do nothing otherwise."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
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


def hide_from_children(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the variables that belong to the daemon alone."""
    private = (
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    )
    return {k: v for k, v in env.items() if k not in private}
