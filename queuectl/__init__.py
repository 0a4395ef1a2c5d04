"""queuectl: the control client for queuectld (CLI and Python ``Client``)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the daemon importing queuectl.protocol does not load the client.
    if name == "Client":
        from queuectl.client import Client

        return Client
    raise AttributeError(name)
