"""Queue storage: the interface and its implementations. The only package that holds SQL."""

from __future__ import annotations

from queuectld.store.base import Store


def open_store(url: str, schema: str = "queuectl") -> Store:
    """Open the store named by ``url``: a file path or ``sqlite:///path`` (SQLite), or a
    ``postgresql://`` / ``postgres://`` URL (PostgreSQL, in the schema ``schema``)."""
    store: Store
    if url.startswith(("postgres://", "postgresql://")):
        try:  # psycopg is an extra: `pip install queuectl[postgres]`
            from queuectld.store.postgres import PostgresStore
        except ImportError as exc:
            from queuectl.errors import InvalidRequest

            raise InvalidRequest(
                f"the PostgreSQL store needs psycopg ({exc}); install queuectl[postgres]"
            ) from exc
        store = PostgresStore(url, schema)
    else:
        from queuectld.store.sqlite import SQLiteStore

        store = SQLiteStore(url.removeprefix("sqlite://"))
    store.open()
    return store


__all__ = ["Store", "open_store"]
