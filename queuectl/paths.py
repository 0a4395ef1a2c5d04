"""Where the daemon's socket is, and whether a per-user daemon may be started.

Standard library only (``os``, not ``pathlib``), so the fast ``queuectl enqueue`` path
shares this lookup with :class:`queuectl.client.Client` at no import cost.
"""

from __future__ import annotations

import os

SYSTEM_SOCKET = "/run/queuectl/queuectld.sock"
SOCKET_NAME = "queuectld.sock"
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107


def user_home() -> str:
    """The per-user state directory: ``$QUEUECTL_HOME`` or ``~/.queuectl``."""
    return os.environ.get("QUEUECTL_HOME") or os.path.join(os.path.expanduser("~"), ".queuectl")


def _may_exist(path: str) -> bool:
    """``os.path.exists``, but a path we may not look at counts as there (connect says why)."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


def resolve_socket(explicit: str | None = None) -> tuple[str, bool]:
    """The socket to use and whether it is the per-user one (the only one autostarted)."""
    if explicit:
        return explicit, False
    if os.environ.get("QUEUECTL_SOCKET"):
        return os.environ["QUEUECTL_SOCKET"], False
    user = os.path.join(user_home(), SOCKET_NAME)
    if not _may_exist(user) and not os.environ.get("QUEUECTL_HOME") and _may_exist(SYSTEM_SOCKET):
        return SYSTEM_SOCKET, False
    return user, True


def socket_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a Unix socket (too long), or None."""
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH_BYTES:
        return None
    return (
        f"the socket path {path} is {size} bytes, over the {MAX_SOCKET_PATH_BYTES}-byte "
        "limit of Unix sockets; use a shorter QUEUECTL_HOME or set QUEUECTL_SOCKET"
    )


def permission_problem(path: str) -> str:
    """The sentence for a socket we may not use: its directory out of reach, or the socket."""
    directory = os.path.dirname(path) or "."
    if not os.access(directory, os.X_OK):
        return (
            f"permission denied on {path}: its directory {directory} is not reachable by "
            "you (another user's, or private); set QUEUECTL_HOME to a directory of yours"
        )
    return f"permission denied on {path}; ask to be added to the queue's group"


def autostart_enabled() -> bool:
    """False when ``QUEUECTL_NO_AUTOSTART`` says so."""
    return os.environ.get("QUEUECTL_NO_AUTOSTART", "").lower() not in ("1", "true", "yes")
