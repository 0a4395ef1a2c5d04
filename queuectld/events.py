"""In-process job events, fanned out to ``watch`` subscribers (the CLI's --follow)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from queuectld.jobs import Job

SUBSCRIBER_BACKLOG = 10_000


class EventBus:
    """Publish job events to every subscriber; a subscriber that falls behind is dropped."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(q)

    def publish(self, kind: str, **fields: Any) -> None:
        if not self._subscribers:
            return
        event = {"type": kind, "time": time.time(), **fields}
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                # A reader this far behind would hold memory without bound; end its stream.
                self._subscribers.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)

    def enqueued(self, job: Job) -> None:
        """A job was stored (by a request or a schedule)."""
        self.publish(
            "enqueued",
            id=job.id,
            command=job.command,
            queue=job.queue,
            state=job.state.value,
            owner_uid=job.owner_uid,
        )

    def cancelled(self, job: Job) -> None:
        """A job ended ``cancelled``; its last error says why."""
        self.publish("cancelled", id=job.id, reason=job.last_error, owner_uid=job.owner_uid)

    def close(self) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self._subscribers.clear()
