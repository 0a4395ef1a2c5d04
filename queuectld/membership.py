"""This daemon's place in the cluster: register, heartbeat, rescue the jobs of the dead.

Every daemon keeps a row in the store's ``nodes`` table (host, pid, start, slots,
socket) and refreshes its heartbeat every ``node_timeout / 3`` seconds. A node whose
heartbeat is older than ``node_timeout`` is dead: one survivor takes on its rescue
(:meth:`~queuectld.store.base.Store.take_dead_nodes` hands each dead node to exactly one
caller) and returns its jobs to the queue with the interruption recorded; the lease
token refuses whatever the dead node might still report.

Two guards keep a slow store from looking like dead peers:

- a daemon rescues others only after it has itself been in touch with the store for a
  whole ``node_timeout`` (after a database restart every heartbeat is old);
- a daemon whose own row was rescued (it was cut off too long) stops its running jobs,
  which run elsewhere now, and registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from queuectl.errors import Conflict, QueuectlError
from queuectld.committer import Committer
from queuectld.jobs import Claim
from queuectld.recorder import Recorder
from queuectld.store.base import NodeRow, Store

log = structlog.get_logger("queuectld.membership")


@dataclass(frozen=True)
class NodeIdentity:
    """Who this daemon is in the ``nodes`` table."""

    name: str  # node_id: the lease owner of its jobs
    host: str
    pid: int
    started_at: float
    socket: str

    @classmethod
    def current(cls, name: str, socket_path: str) -> NodeIdentity:
        return cls(name, socket.gethostname(), os.getpid(), time.time(), socket_path)


def name_taken(existing: NodeRow | None, me: NodeIdentity, now: float, timeout: float) -> bool:
    """True when ``existing`` is another daemon, alive, registered under our name."""
    if existing is None or existing.state(now, timeout) != "live":
        return False  # stopped, rescued, or quiet: a crashed earlier run, a host that died
    if existing.host == me.host:
        # Same machine: alive only if that process still runs (a restart after a crash
        # finds its own old row, with a pid that is gone).
        return existing.pid != me.pid and _pid_alive(existing.pid)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Membership:
    """Registers this daemon, heartbeats, and rescues the jobs of dead nodes."""

    def __init__(
        self,
        committer: Committer,
        recorder: Recorder,
        me: NodeIdentity,
        timeout: Callable[[], float],
        slots: Callable[[], int],
        on_evicted: Callable[[], None],
    ) -> None:
        self._committer = committer
        self._recorder = recorder
        self.me = me
        self._timeout = timeout
        self._slots = slots
        self._on_evicted = on_evicted
        self._task: asyncio.Task[None] | None = None
        # Since when the store has answered every heartbeat without a gap (monotonic).
        self._in_touch_since: float | None = None

    def _row(self, now: float, slots: int) -> NodeRow:
        me = self.me
        return NodeRow(me.name, me.host, me.pid, me.started_at, now, slots, me.socket)

    async def join(self, slots: int) -> None:
        """Register with ``slots`` (the workers about to start); refuse to start when a
        live daemon already runs under our name."""
        now = time.time()
        timeout = self._timeout()

        def work(store: Store) -> NodeRow | None:
            existing = next((n for n in store.nodes() if n.name == self.me.name), None)
            if name_taken(existing, self.me, now, timeout):
                assert existing is not None
                raise Conflict(
                    f"another queuectld (pid {existing.pid} on {existing.host}) is running "
                    f"as node {self.me.name!r} on this store; give each daemon its own "
                    "node_id"
                )
            return store.register_node(self._row(now, slots))

        await self._committer.call(work)
        self._in_touch_since = time.monotonic()
        log.info("node_registered", node=self.me.name, host=self.me.host)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="heartbeat")

    async def leave(self) -> None:
        """Stop heartbeating and mark the node stopped (a clean stop, not a death)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        me = self.me
        try:
            await self._committer.call(lambda s: s.stop_node(me.name, me.started_at, time.time()))
        except QueuectlError as exc:
            log.warning("node_stop_not_recorded", error=str(exc))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, self._timeout() / 3))
            await self.beat_once()

    async def beat_once(self) -> None:
        """One heartbeat, then (if we are in touch long enough) one rescue pass."""
        me, now = self.me, time.time()
        slots = self._slots()
        try:
            alive = await self._committer.call(
                lambda s: s.heartbeat_node(me.name, me.started_at, now, slots)
            )
        except QueuectlError:
            self._in_touch_since = None  # the committer logs the outage once
            return
        if self._in_touch_since is None:
            self._in_touch_since = time.monotonic()
        if not alive:
            log.error(
                "node_evicted",
                node=me.name,
                reason="the store lost our heartbeat for longer than node_timeout and "
                "another daemon took our jobs back; stopping ours (they run elsewhere) "
                "and registering again",
            )
            self._on_evicted()
            try:
                await self._committer.call(lambda s: s.register_node(self._row(time.time(), slots)))
            except QueuectlError:
                self._in_touch_since = None
            return
        if time.monotonic() - self._in_touch_since >= self._timeout():
            await self.rescue(now)

    async def rescue(self, now: float) -> int:
        """Return the jobs of nodes whose heartbeat stopped to the queue; how many."""
        stale_before = now - self._timeout()

        def work(store: Store) -> list[tuple[NodeRow, list[Claim]]]:
            dead = store.take_dead_nodes(stale_before, now)
            return [(node, store.leased_jobs(node.name, None)) for node in dead]

        try:
            taken = await self._committer.call(work)
        except QueuectlError as exc:
            log.warning("rescue_failed", error=str(exc))
            return 0
        count = 0
        for node, claims in taken:
            log.warning(
                "node_dead",
                node=node.name,
                host=node.host,
                last_heartbeat=node.heartbeat_at,
                jobs=len(claims),
            )
            reason = f"queuectld {node.name} on {node.host} stopped heartbeating"
            for claim in claims:
                await self._recorder.store_one(self._recorder.interrupted(claim, reason))
                count += 1
        return count
