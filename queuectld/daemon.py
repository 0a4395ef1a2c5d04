"""Wires the parts together: start -> READY -> serve -> drain -> STOPPING -> exit.

SIGTERM, SIGINT and a ``shutdown`` request all take the same path
(:meth:`Daemon.request_stop`); signal handlers only set that flag. A second one
stops at once: running jobs are stopped and requeued instead of waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from queuectl.errors import QueuectlError, Unavailable
from queuectl.protocol import Request
from queuectld import handlers, procs, server
from queuectld.access import AccessPolicy
from queuectld.committer import Committer
from queuectld.config import DaemonConfig, queue_settings
from queuectld.dispatcher import Dispatcher
from queuectld.events import EventBus
from queuectld.store import open_store
from queuectld.supervisor import Supervisor, WorkerProcess
from queuectld.systemd import Notifier, hide_from_children

log = structlog.get_logger("queuectld")


class Daemon:
    """One queuectld: the store, the control socket, the dispatcher and the workers."""

    def __init__(self, config: DaemonConfig, ready_fd: int | None = None) -> None:
        self.config = config
        self.ready_fd = ready_fd
        self.notifier = Notifier()
        self.events = EventBus()
        self.access = AccessPolicy(config.admin_groups)
        self.settings: dict[str, float | int] = {}
        self.draining = False
        self.started_monotonic = time.monotonic()
        self._stop = asyncio.Event()
        self._stop_requests = 0
        self._lock_fd: int | None = None
        self.server: server.ControlServer | None = None

    def caller_uid(self) -> int | None:
        return server.caller_uid()

    def request_stop(self) -> None:
        """Begin a graceful drain; a second request stops running jobs at once."""
        self._stop_requests += 1
        self._stop.set()
        if self._stop_requests > 1 and self.draining:
            log.warning("stop_now")
            self.supervisor.cancel_running()

    async def run(self) -> int:
        """Serve until asked to stop; return the exit status."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._lock_store()
        store = await asyncio.to_thread(open_store, cfg.database)
        self.committer = Committer(store, loop)
        self.committer.start()
        stored = await self.committer.call(lambda s: s.get_settings())
        self.settings = dict(queue_settings(stored))
        desired = int(stored.get(handlers.WORKERS_SETTING, cfg.workers))

        self.dispatcher = Dispatcher(self.committer, self.events, cfg, lambda: self.settings)
        worker_env = hide_from_children(dict(os.environ))
        worker_env.pop("QUEUECTL_SOCKET", None)

        async def spawn() -> WorkerProcess:
            return await procs.spawn_worker(worker_env)

        self.supervisor = Supervisor(
            spawn, self.dispatcher.wake, self.dispatcher.on_finished, self.dispatcher.on_lost
        )
        self.dispatcher.supervisor = self.supervisor
        recovered = await self.dispatcher.recover()

        self.server = server.ControlServer(
            cfg.socket,
            cfg.socket_mode_bits,
            cfg.allowed_uids,
            cfg.max_connections,
            self._handle,
            self._stream,
            lambda req: req.op in handlers.STREAMS,
        )
        self.server.group = cfg.socket_group
        await self.server.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

        Path(cfg.log_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.supervisor.scale(desired)
        self.dispatcher.start()
        log.info(
            "daemon_ready",
            socket=cfg.socket,
            database=cfg.database,
            workers=desired,
            recovered=recovered,
            pid=os.getpid(),
        )
        self.notifier.notify("READY=1", f"STATUS=ready, {desired} workers")
        self._signal_ready()

        await self._stop.wait()
        await self._drain()
        return 0

    async def _drain(self) -> None:
        cfg = self.config
        self.draining = True
        self.notifier.notify("STOPPING=1", "STATUS=draining")
        log.info("drain_started", running=len(self.supervisor.busy()), deadline=cfg.drain_timeout)
        self.dispatcher.paused = True
        if self.server is not None:
            await self.server.stop_accepting()
        timeout = 0.0 if self._stop_requests > 1 else cfg.drain_timeout
        if not await self.supervisor.wait_idle(timeout):
            log.warning("drain_deadline_passed", running=len(self.supervisor.busy()))
            self.supervisor.cancel_running()
        await self.supervisor.stop(kill_after=cfg.kill_grace + 5.0)
        await self.dispatcher.close()
        self.events.close()
        if self.server is not None:
            await self.server.close()
        await self.committer.stop()
        self._unlock_store()
        log.info("daemon_stopped")

    async def _handle(self, req: Request, args: Any) -> Any:
        return await handlers.HANDLERS[req.op](self, args)

    def _stream(self, req: Request, args: Any) -> AsyncIterator[dict[str, Any]]:
        return handlers.STREAMS[req.op](self, args)

    def _reload(self) -> None:
        """SIGHUP: reopen the log file (logrotate)."""
        from queuectld.logs import reopen_log_file

        reopen_log_file()
        log.info("log_reopened")

    def _signal_ready(self) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, b"READY\n")
            os.close(self.ready_fd)
        self.ready_fd = None

    def _lock_store(self) -> None:
        """Refuse to start if another daemon holds this store."""
        path = Path(self.config.database + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Unavailable(
                f"another queuectld is using {self.config.database}; stop it first"
            ) from None
        self._lock_fd = fd

    def _unlock_store(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def run_daemon(config: DaemonConfig, ready_fd: int | None = None) -> int:
    """Run a daemon on a fresh event loop until it stops; return the exit status."""
    daemon = Daemon(config, ready_fd)
    try:
        return asyncio.run(daemon.run())
    except QueuectlError as exc:
        log.error("daemon_failed", error=exc.message)
        return 1
