"""Runs store calls on one thread and commits every call queued together in one transaction.

This is the group commit behind "acknowledged means durable": each transaction ends
with one fsync (SQLite WAL, ``synchronous=FULL``), and callers are answered only after
it. While one commit is in flight new calls queue up, and the next transaction takes
them all, so the cost of a sync is shared by everyone who arrived during the last one.
Each call runs in its own savepoint: a refused request rolls back alone.

One hook may add work to every transaction: :attr:`Committer.before_commit` runs last
in it (the dispatcher claims jobs for idle workers there, so a job enqueued while a
worker waits is claimed in the enqueue's own commit, not one sync later). What it
returns is called on the event loop once the transaction is committed, right after the
callers are answered.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from queuectl.errors import InternalError, QueuectlError, StoreUnavailable
from queuectld.store.base import Store

T = TypeVar("T")
StoreCall = Callable[[Store], Any]
MAX_BATCH = 2048
# While the store is unreachable, one transaction is tried after each pause; the calls
# that arrive in between are answered at once with the outage's error.
OUTAGE_FIRST_PAUSE_S = 0.25
OUTAGE_MAX_PAUSE_S = 5.0

log = structlog.get_logger("queuectld.committer")


class Committer:
    """The single thread that owns the store connection."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self._loop = loop
        self._calls: queue.SimpleQueue[tuple[StoreCall, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        # Calls that must run outside any transaction (`vacuum`), each on its own.
        self._outside: set[asyncio.Future[Any]] = set()
        self._thread = threading.Thread(target=self._run, name="queuectld-store", daemon=True)
        self.transactions = 0
        self.calls = 0
        # Runs on this thread at the end of each transaction; returns what to run on the
        # loop after the commit (or None). Its failure rolls back its own work only.
        self.before_commit: Callable[[Store], Callable[[], None] | None] | None = None
        # Runs on the loop when the store answers again after an outage.
        self.on_recovered: Callable[[], None] | None = None
        self._outage: StoreUnavailable | None = None
        self._outage_began = 0.0
        self._pause = OUTAGE_FIRST_PAUSE_S
        self._retry_at = 0.0

    def start(self) -> None:
        self._thread.start()

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` in the next transaction; return once it is committed."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((fn, fut))
        return await fut

    async def call_outside(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` alone, outside any transaction (the store's ``compact``);
        every other call waits for it."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self._outside.add(fut)
        self._calls.put((fn, fut))
        return await fut

    async def stop(self) -> None:
        """Finish the queued calls, then close the store."""
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            while True:
                first = self._calls.get()
                if first is None:
                    return
                if first[1] in self._outside:
                    self._alone(*first)
                    continue
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    if item[1] in self._outside:
                        self._commit(batch)
                        batch = []
                        self._alone(*item)
                        continue
                    batch.append(item)
                self._commit(batch)
                if stop:
                    return
        finally:
            self.store.close()

    def _alone(self, fn: StoreCall, fut: asyncio.Future[Any]) -> None:
        self._outside.discard(fut)
        result: tuple[asyncio.Future[Any], Any, BaseException | None]
        try:
            result = (fut, fn(self.store), None)
        except QueuectlError as exc:
            result = (fut, None, exc)
        except Exception as exc:
            log.exception("store_call_failed")
            result = (fut, None, InternalError(f"store call failed: {exc}"))
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = [result]
        self._loop.call_soon_threadsafe(_deliver, results, None)

    def _commit(self, batch: list[tuple[StoreCall, asyncio.Future[Any]]]) -> None:
        if not batch:
            return
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        after: Callable[[], None] | None = None
        if self._outage is not None and time.monotonic() < self._retry_at:
            # Answer at once rather than make every caller wait for a connect to fail.
            refused: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = [
                (fut, None, self._outage) for _, fut in batch
            ]
            self._loop.call_soon_threadsafe(_deliver, refused, None)
            return
        try:
            with self.store.transaction():
                for fn, fut in batch:
                    try:
                        with self.store.savepoint():
                            results.append((fut, fn(self.store), None))
                    except QueuectlError as exc:
                        results.append((fut, None, exc))
                    except Exception as exc:
                        log.exception("store_call_failed")
                        results.append((fut, None, InternalError(f"store call failed: {exc}")))
                hook = self.before_commit
                if hook is not None:
                    try:
                        with self.store.savepoint():
                            after = hook(self.store)
                    except Exception:
                        log.exception("before_commit_failed")
                        after = None
        except StoreUnavailable as exc:
            self._note_outage(exc)
            results = [(fut, None, exc) for _, fut in batch]
            after = None
        except QueuectlError as exc:
            # The commit itself failed (disk full, I/O error): nothing of the batch is kept.
            log.error("commit_failed", error=str(exc), calls=len(batch))
            results = [(fut, None, exc) for _, fut in batch]
            after = None
        except Exception as exc:
            log.exception("commit_failed")
            err = InternalError(f"store commit failed: {exc}")
            results = [(fut, None, err) for _, fut in batch]
            after = None
        else:
            if self._outage is not None:
                self._outage = None
                took = round(time.monotonic() - self._outage_began, 3)
                log.warning("store_available", store=self.store.describe(), down_seconds=took)
                if self.on_recovered is not None:
                    self._loop.call_soon_threadsafe(self.on_recovered)
        self.transactions += 1
        self.calls += len(batch)
        self._loop.call_soon_threadsafe(_deliver, results, after)

    def _note_outage(self, exc: StoreUnavailable) -> None:
        """One log line when the store goes away; then retry with a growing pause."""
        now = time.monotonic()
        if self._outage is None:
            self._outage_began = now
            self._pause = OUTAGE_FIRST_PAUSE_S
            log.error(
                "store_unavailable",
                store=self.store.describe(),
                error=str(exc),
                hint="running jobs go on; outcomes are kept and recorded once it is back",
            )
        else:
            self._pause = min(self._pause * 2, OUTAGE_MAX_PAUSE_S)
        self._outage = exc
        self._retry_at = now + self._pause


def _deliver(
    results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
    after: Callable[[], None] | None = None,
) -> None:
    # Callers first: their tasks resume before anything ``after`` schedules, so an
    # enqueue's handler announces the job before the dispatcher announces its start.
    for fut, value, error in results:
        if fut.cancelled():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
    if after is not None:
        try:
            after()
        except Exception:
            log.exception("after_commit_failed")
