"""queuectl: the control client for queuectld (CLI and Python ``Client``)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import; `queuectl enqueue` counts them
    from queuectl.client import Client

__version__ = "0.1.0"
__all__ = ["Client"]


def __getattr__(name: str) -> type[Client]:
    # Lazy, so that the daemon importing queuectl.protocol does not load the client.
    if name == "Client":
        from queuectl.client import Client

        return Client
    raise AttributeError(name)
