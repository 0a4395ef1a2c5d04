"""Errors shared by the client and the daemon.

Every error that crosses the socket carries a stable ``code``; programs match
on the code, people read the message. Codes never change meaning once shipped.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import (the fast enqueue path loads this)
    from typing import ClassVar

# Exit statuses of `queuectl`: one place, shared by the click CLI and the fast path.
EXIT_OK = 0
EXIT_REFUSED = 1  # the daemon refused the request, or no daemon could be reached
EXIT_USAGE = 2  # misuse: bad flags, invalid JSON, an unusable environment
EXIT_INTERRUPTED = 130
# `queuectl wait` (a job that failed with an exit code exits with that code instead):
EXIT_WAIT_DEAD = 3  # a job is dead without an exit code (timed out, killed, not started)
EXIT_WAIT_CANCELLED = 4  # a job was cancelled
EXIT_WAIT_TIMEOUT = 124  # --timeout passed first (as coreutils `timeout`)


class QueuectlError(Exception):
    """Base of every error queuectl reports; ``code`` is stable, ``message`` is one sentence."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(QueuectlError):
    """The request (or the job in it) is malformed: wrong type, unknown field, over a limit."""

    code = "invalid_request"


class NotFound(QueuectlError):
    """The named job does not exist."""

    code = "not_found"


class Conflict(QueuectlError):
    """The request clashes with the current state: duplicate id, job not in the DLQ, ..."""

    code = "conflict"


class PermissionDenied(QueuectlError):
    """The caller's peer credentials are not allowed to use this daemon."""

    code = "permission_denied"


class StorageFull(QueuectlError):
    """The disk holding the store is full; nothing was written."""

    code = "storage_full"


class Unavailable(QueuectlError):
    """The daemon cannot be reached, or is shutting down."""

    code = "unavailable"


class NoDaemon(Unavailable):
    """Nothing listens on the socket (client side only; its code is ``unavailable``)."""


class ShuttingDown(Unavailable):
    """The daemon is draining: it answers ``status`` and ``ping`` but takes no new work."""

    code = "shutting_down"


class StoreUnavailable(Unavailable):
    """The daemon runs but cannot reach its store (a PostgreSQL restart, a lost
    connection, a full pool); it retries by itself, so the request can be retried."""

    code = "store_unavailable"


class ProtocolError(QueuectlError):
    """A frame could not be read: bad length, bad msgpack, wrong version."""

    code = "protocol"


class InternalError(QueuectlError):
    """Something failed inside the daemon; its log has the details."""

    code = "internal"


ERRORS_BY_CODE: dict[str, type[QueuectlError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        NotFound,
        Conflict,
        PermissionDenied,
        StorageFull,
        Unavailable,
        ShuttingDown,
        StoreUnavailable,
        ProtocolError,
        InternalError,
    )
}


def error_from_code(code: str, message: str) -> QueuectlError:
    """Rebuild the error a peer reported; unknown codes become ``InternalError``."""
    return ERRORS_BY_CODE.get(code, InternalError)(message)
