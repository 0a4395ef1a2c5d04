"""Queue storage: the interface and its implementations. The only package that holds SQL."""

from __future__ import annotations

from queuectld.store.base import Store


def open_store(url: str) -> Store:
    """Open the store named by ``url``: a file path or ``sqlite:///path``.

    PostgreSQL (``postgresql://...``) is planned behind the same interface.
    """
    from queuectl.errors import InvalidRequest

    if url.startswith(("postgres://", "postgresql://")):
        raise InvalidRequest("the PostgreSQL store is not available yet; use a SQLite path")
    from queuectld.store.sqlite import SQLiteStore

    path = url.removeprefix("sqlite://")
    store = SQLiteStore(path)
    store.open()
    return store


__all__ = ["Store", "open_store"]
