"""The gateway's side of the socket: a Client per worker thread, one shared event feed.

Request handlers run :meth:`Upstream.call` in Starlette's thread pool; each thread keeps
its own :class:`~queuectl.client.Client` (a Client is not thread-safe) and replaces it
when the daemon has hung up. :class:`EventHub` holds ONE ``watch`` subscription for the
whole gateway and fans its events out to every server-sent-events stream, so a hundred
open dashboards cost the daemon one subscriber, not a hundred.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from queuectl.client import Client
from queuectl.errors import ProtocolError, QueuectlError, Unavailable

T = TypeVar("T")

RECONNECT_S = 1.0  # between attempts to resubscribe after the daemon went away
SUBSCRIBER_BACKLOG = 1000  # events a slow browser may lag before its stream is ended


class Upstream:
    """Calls to queuectld from worker threads, one connection per thread."""

    def __init__(self, socket: str | None, autostart: bool | None = None) -> None:
        self.socket = socket
        self.autostart = autostart
        self._local = threading.local()

    def connect(self) -> Client:
        """A new connection (the event feed keeps its own)."""
        return Client.connect(self.socket, autostart=self.autostart)

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is not None and not client.idle_and_open():
            client.close()
            client = None
        if client is None:
            client = self._local.client = self.connect()
        return client

    def _drop(self) -> None:
        client: Client | None = getattr(self._local, "client", None)
        if client is not None:
            client.close()
        self._local.client = None

    def call(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn`` with this thread's client; a broken connection is dropped, not reused."""
        client = self._client()
        try:
            return fn(client)
        except (Unavailable, ProtocolError):
            self._drop()
            raise
        except QueuectlError:
            raise  # the daemon answered: the connection is fine
        except OSError as exc:
            self._drop()
            raise Unavailable(f"lost the connection to queuectld: {exc}") from None
        except BaseException:
            self._drop()  # a half-read reply would confuse the next request
            raise


Subscriber = asyncio.Queue[dict[str, Any] | None]


class EventHub:
    """One ``watch`` subscription, fanned out to asyncio subscribers on one event loop.

    ``observe`` sees every event first, in the feed's thread (the Prometheus counters).
    The feed reconnects when the daemon goes away and says so with an ``upstream``
    event (``connected`` true or false), so the dashboard can show it.
    """

    def __init__(self, upstream: Upstream, observe: Callable[[dict[str, Any]], None]) -> None:
        self._upstream = upstream
        self._observe = observe
        self._subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._client: Client | None = None
        self._thread: threading.Thread | None = None
        self.connected = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="queuectl-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            client.abort()  # ends the blocking read in the feed thread
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self) -> Subscriber:
        queue: Subscriber = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: Subscriber) -> None:
        self._subscribers.discard(queue)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._client = self._upstream.connect()
                self._set_connected(True)
                for event in self._client.watch():
                    self._publish(event)
            except (QueuectlError, OSError, ValueError):
                pass  # the daemon went away (or never answered): try again shortly
            finally:
                if self._client is not None:
                    self._client.close()
                    self._client = None
            self._set_connected(False)
            self._stop.wait(RECONNECT_S)

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._publish({"type": "upstream", "time": time.time(), "connected": connected})

    def _publish(self, event: dict[str, Any]) -> None:
        self._observe(event)
        if self._loop is not None and not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                self._loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A browser this far behind would hold memory without bound: end its stream.
                self._subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)
