"""Wires the parts together: start -> READY -> serve -> drain -> STOPPING -> exit.

SIGTERM, SIGINT and a ``shutdown`` request all take the same path
(:meth:`Daemon.request_stop`); signal handlers only set that flag. A second one
stops at once: running jobs are stopped and requeued instead of waited for.
SIGHUP re-reads the configuration file (:meth:`Daemon.reload`).

Under systemd (``Type=notify``) the daemon reports ``READY=1`` once its socket
listens and its store is open, keeps ``STATUS=`` current, pings the watchdog from
the event loop, says ``STOPPING=1`` when it drains and extends systemd's stop
timeout while a long drain is still within its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog

from queuectl.errors import QueuectlError, StoreUnavailable, Unavailable
from queuectl.protocol import JobState, Request
from queuectld import cgroup, handlers, procs, server
from queuectld.access import AccessPolicy
from queuectld.committer import Committer
from queuectld.config import (
    RESTART_KEYS,
    ConfigError,
    DaemonConfig,
    QueueSettings,
    group_id,
    queue_settings,
)
from queuectld.dispatcher import Dispatcher
from queuectld.events import EventBus
from queuectld.follow import OutputRelay
from queuectld.membership import Membership, NodeIdentity
from queuectld.recovery import recover
from queuectld.retention import Retention
from queuectld.scheduler import Scheduler
from queuectld.store import Store, open_store
from queuectld.supervisor import OsProcessOps, Supervisor, SupervisorEvents, default_executors
from queuectld.systemd import (
    Notifier,
    StatusReporter,
    hide_from_children,
    listen_fds,
    listening_socket,
    watchdog,
    watchdog_interval,
)

log = structlog.get_logger("queuectld")

# While draining, tell systemd this often that the stop is still on schedule.
EXTEND_EVERY_S = 5.0
# Another host's change wakes the scheduler at most this often (schedules are rare;
# enqueues, which wake it too, are not).
REMOTE_POKE_DELAY_S = 0.5
# What the daemon may still need after the drain deadline: the job's kill grace, the
# workers' exit, closing the store (see _drain); the extension covers it.
STOP_SLACK_S = 15.0

ConfigLoader = Callable[[], DaemonConfig]


class _Events(EventBus):
    """The event bus, also telling the STATUS= reporter that the counts changed."""

    def __init__(self, changed: Callable[[], None]) -> None:
        super().__init__()
        self._changed = changed

    def publish(self, kind: str, **fields: Any) -> None:
        self._changed()
        super().publish(kind, **fields)


class Daemon:
    """One queuectld: the store, the control socket, the dispatcher and the workers."""

    def __init__(
        self, config: DaemonConfig, ready_fd: int | None = None, loader: ConfigLoader | None = None
    ) -> None:
        self.config = config
        self.ready_fd = ready_fd
        self.loader = loader
        self.notifier = Notifier()
        self.status = StatusReporter(self.notifier, self._status_text)
        self.events: EventBus = _Events(self.status.changed)
        self.access = AccessPolicy(config.admin_groups)
        self.followers = OutputRelay()
        self.settings: dict[str, float | int] = {}
        self.draining = False
        self.started_monotonic = time.monotonic()
        self._stop = asyncio.Event()
        self._stop_requests = 0
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drain_deadline = 0.0
        self.server: server.ControlServer | None = None
        self._scheduler_poke: asyncio.TimerHandle | None = None

    @property
    def connections(self) -> int:
        """Control connections open now."""
        return self.server.connections if self.server is not None else 0

    def request_stop(self) -> None:
        """Begin a graceful drain; a second request stops running jobs at once."""
        self._stop_requests += 1
        self._stop.set()
        if self._stop_requests > 1 and self.draining:
            log.warning("stop_now", running=self.supervisor.busy)
            self._drain_deadline = time.monotonic()
            self.supervisor.cancel_running()

    async def run(self) -> int:
        """Serve until asked to stop; return the exit status."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        # First of all, so that a stop during start-up is a clean stop, not a kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        inherited = self._inherited_socket()  # also drops LISTEN_* from our environment

        self._lock_store()
        try:
            store = await asyncio.to_thread(_open_store, cfg)
        except BaseException:
            self._unlock_store()
            raise
        self.committer = Committer(store, loop)
        self.committer.start()
        try:
            await self._start(inherited)
        except BaseException:
            if self.server is not None:
                await self.server.close()
            await self.committer.stop()
            self._unlock_store()
            raise

        await self._stop.wait()
        await self._drain()
        if self.containment.base is not None:
            with contextlib.suppress(OSError):
                cgroup.remove(self.containment.base)  # empty after a clean drain
        return 0

    async def _start(self, inherited: Any) -> None:
        cfg = self.config
        stored = await self.committer.call(lambda s: s.get_settings())
        self.settings = dict(queue_settings(stored))
        desired = _runtime_workers(stored, cfg.node_id)
        if desired is None:
            desired = cfg.workers

        executor_env = hide_from_children(dict(os.environ))
        # Inherited by every job: see procs.find_job_groups.
        executor_env[procs.QUEUE_TAG] = cfg.store_key()
        ops = OsProcessOps(executor_env, cfg.store_key())
        max_executors = default_executors(cfg.executors)
        found = cgroup.discover(cfg.cgroup, cfg.store_key())
        self.containment = await asyncio.to_thread(cgroup.prepare, found)
        if self.containment.base is not None:
            # Whatever a killed daemon and its executors left running ends here, before
            # its jobs can be handed out again (whatever their group or environment).
            ended = await asyncio.to_thread(cgroup.sweep, self.containment.base)
            if ended:
                log.warning("orphaned_attempts_killed", attempts=ended)

        def make_supervisor(events: SupervisorEvents) -> Supervisor:
            return Supervisor(ops, events, max_executors, on_output=self.followers.deliver)

        self.dispatcher = Dispatcher(
            self.committer,
            self.events,
            cfg,
            lambda: QueueSettings.from_values(self.settings),
            make_supervisor,
            slots_changed=self.status.changed,
            cgroups=self.containment.base,
            controllers=self.containment.controllers,
        )
        self.supervisor = self.dispatcher.supervisor
        self.committer.on_recovered = self.dispatcher.store_recovered
        # Before taking back "our" jobs: refuse to start if a live daemon has our name.
        self.membership = Membership(
            self.committer,
            self.dispatcher.recorder,
            NodeIdentity.current(cfg.node_id, cfg.socket),
            lambda: cfg.node_timeout,
            lambda: self.supervisor.desired,
            self._evicted,
        )
        await self.membership.join(desired)
        recovered = await recover(
            self.committer, self.dispatcher.recorder, cfg.node_id, cfg.store_key()
        )

        self.server = server.ControlServer(
            cfg.socket,
            cfg.socket_mode_bits,
            cfg.allowed_uids,
            cfg.max_connections,
            self._handle,
            self._stream,
            lambda req: req.op in handlers.STREAMS,
            allowed_gids=_gids(cfg.allowed_groups),
            inherited=inherited,
            group=cfg.socket_group,
            waiting_ops=frozenset(
                op.value for op in (*handlers.STREAMS, *handlers.ENDED_WITH_CONNECTION)
            ),
        )
        await self.server.start()
        if inherited is not None and self.server.path != cfg.socket:
            log.warning(
                "activated_socket_elsewhere",
                socket=self.server.path,
                configured=cfg.socket,
                hint="clients look for the configured path; make them agree",
            )

        Path(cfg.log_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.supervisor.scale(desired)
        self.dispatcher.start()
        self.scheduler = Scheduler(
            self.committer, self.events, self.dispatcher.wake, self.dispatcher.kill
        )
        self.scheduler.start()
        # The config object is the one SIGHUP updates: the next pass reads the new values.
        self.retention = Retention(
            self.committer,
            cfg.log_dir,
            cfg.retention,
            lambda: cfg.retention_every,
            shared=cfg.uses_postgres,
        )
        self.retention.start()
        self.membership.start()
        wakeups = self.committer.store.wakeup_source()
        if wakeups is not None:
            self._spawn(wakeups.run(self._remote_change), "store-wakeups")
            self._spawn(self._follow_shared_settings(), "shared-settings")
        log.info(
            "daemon_ready",
            socket=self.server.path,
            activated=inherited is not None,
            database=self.committer.store.describe(),
            workers=desired,
            executors=min(max_executors, desired) if desired else 0,
            recovered=recovered,
            pid=os.getpid(),
            containment=self.containment.describe(),
        )
        self.notifier.notify("READY=1", f"STATUS=ready, {desired} workers")
        self.status.last = f"ready, {desired} workers"
        self._signal_ready()
        self.status.start()
        self.status.changed()
        interval = watchdog_interval()
        if interval is not None:
            probe = functools.partial(self.committer.call, _nothing)
            self._spawn(watchdog(self.notifier, interval, probe), "sd-watchdog")

    def _inherited_socket(self) -> Any:
        """The listening socket systemd passed (socket activation), or None."""
        fds = listen_fds()
        if not fds:
            return None
        for extra in fds[1:]:
            log.warning("extra_socket_ignored", fd=extra)
            with contextlib.suppress(OSError):
                os.close(extra)
        try:
            return listening_socket(fds[0])
        except ValueError as exc:
            raise Unavailable(str(exc)) from None

    def _remote_change(self) -> None:
        """Another daemon changed the store (a job, a queue, a schedule): look again."""
        self.dispatcher.wake()
        if self._scheduler_poke is None and not self.draining:
            self._scheduler_poke = asyncio.get_running_loop().call_later(
                REMOTE_POKE_DELAY_S, self._poke_scheduler
            )

    def _poke_scheduler(self) -> None:
        self._scheduler_poke = None
        self.scheduler.poke()

    def _evicted(self) -> None:
        """Our jobs were given to others while we were cut off: stop running them."""
        self.supervisor.cancel_running()

    async def _follow_shared_settings(self) -> None:
        """Settings another daemon stored (`config set` through it) apply here too."""
        while True:
            await asyncio.sleep(max(1.0, self.config.node_timeout / 3))
            try:
                stored = await self.committer.call(lambda s: s.get_settings())
            except QueuectlError:
                continue
            fresh = dict(queue_settings(stored))
            if fresh != self.settings:
                log.info(
                    "settings_changed_elsewhere",
                    keys=sorted(
                        k
                        for k in fresh.keys() | self.settings.keys()
                        if fresh.get(k) != self.settings.get(k)
                    ),
                )
                self.settings.clear()
                self.settings.update(fresh)
                self.dispatcher.wake()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _status_text(self) -> str:
        """``2/2 workers, 14 pending, 3 running`` (+ retrying, dead when there are any)."""
        counts = await self.committer.call(lambda s: s.count_by_state())
        sup = self.supervisor
        text = (
            f"{sup.running}/{sup.desired} workers, {counts[JobState.PENDING]} pending, "
            f"{counts[JobState.PROCESSING]} running"
        )
        if counts[JobState.FAILED]:
            text += f", {counts[JobState.FAILED]} waiting to retry"
        if counts[JobState.DEAD]:
            text += f", {counts[JobState.DEAD]} dead"
        return text

    # -- stopping -------------------------------------------------------------

    async def _drain(self) -> None:
        cfg = self.config
        started = time.monotonic()
        self.draining = True
        await self.status.stop()
        timeout = 0.0 if self._stop_requests > 1 else cfg.drain_timeout
        self._drain_deadline = started + timeout
        running = self.supervisor.busy
        self.notifier.notify(
            "STOPPING=1", f"STATUS=draining: {running} running, deadline {timeout:g}s"
        )
        log.info("drain_started", running=running, deadline=timeout)
        self._spawn(self._extend_stop_timeout(), "sd-extend-timeout")
        self.dispatcher.drain()
        await self.scheduler.close()
        await self.retention.close()
        if self.server is not None:
            await self.server.stop_accepting()
        while not await self.supervisor.wait_idle(self._drain_deadline - time.monotonic()):
            if time.monotonic() >= self._drain_deadline:
                running = self.supervisor.busy
                log.warning("drain_deadline_passed", running=running, requeued=running)
                self.notifier.notify(f"STATUS=stopping {running} jobs to requeue them")
                self.supervisor.cancel_running()
                break
        await self.supervisor.stop(kill_after=cfg.kill_grace + 5.0)
        await self.dispatcher.close()
        # A claim that was committed while the drain began never reached a worker:
        # give back whatever this node still holds, so nothing stays `processing`.
        await recover(self.committer, self.dispatcher.recorder, cfg.node_id, cfg.store_key())
        await self.membership.leave()
        if self._scheduler_poke is not None:
            self._scheduler_poke.cancel()
        self.events.close()
        if self.server is not None:
            await self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.committer.stop()
        self._unlock_store()
        log.info("daemon_stopped", drain_seconds=round(time.monotonic() - started, 3))
        self.notifier.close()

    async def _extend_stop_timeout(self) -> None:
        """EXTEND_TIMEOUT_USEC: keep systemd from killing a drain that is on schedule.

        Each message gives systemd a new horizon (the drain deadline plus what stopping
        needs after it); a daemon that hangs stops sending and is killed when it passes.
        TimeoutStopSec= still applies as the floor, so a short drain changes nothing.
        """
        while True:
            left = max(0.0, self._drain_deadline - time.monotonic())
            horizon = left + self.config.kill_grace + STOP_SLACK_S
            self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(horizon * 1_000_000)}")
            await asyncio.sleep(EXTEND_EVERY_S)

    # -- requests -------------------------------------------------------------

    async def _handle(self, req: Request, args: Any) -> Any:
        return await handlers.HANDLERS[req.op](self, args)

    def _stream(self, req: Request, args: Any) -> AsyncIterator[dict[str, Any]]:
        return handlers.STREAMS[req.op](self, args)

    # -- reloading ------------------------------------------------------------

    def _on_sighup(self) -> None:
        self._spawn(self.reload(), "reload")

    async def reload(self) -> bool:
        """SIGHUP: reopen the log file, then re-read the configuration and apply it.

        An unusable file changes nothing (the running configuration stays, and the
        problems are logged). Paths the daemon has open need a restart; everything
        else applies at once, without dropping a connection or a job.
        """
        from queuectld.logs import configure_logging, reopen_log_file

        reopen_log_file()  # logrotate's postrotate, even when the file is broken
        if self.loader is None:
            log.info("log_reopened")
            return True
        if self.draining:
            log.info("reload_ignored", reason="draining")
            return False
        self.notifier.notify("RELOADING=1", "STATUS=reloading the configuration")
        try:
            try:
                new = await asyncio.to_thread(self.loader)
            except ConfigError as exc:
                log.error(
                    "config_reload_failed",
                    problems=[str(p) for p in exc.problems],
                    kept="the running configuration",
                )
                return False
            except QueuectlError as exc:
                log.error("config_reload_failed", problems=[exc.message], kept="the running one")
                return False
            old = self.config
            changed = [
                f.name
                for f in dataclasses.fields(DaemonConfig)
                if getattr(old, f.name) != getattr(new, f.name)
            ]
            restart = [k for k in changed if k in RESTART_KEYS]
            if restart:
                log.warning(
                    "config_needs_restart",
                    keys=restart,
                    hint="these keys apply at the next start; the running values stay",
                )
            applied = [k for k in changed if k not in RESTART_KEYS]
            for key in applied:
                setattr(old, key, getattr(new, key))  # the dispatcher reads the same object
            if {"log_level", "log_format", "log_file"} & set(applied):
                configure_logging(old.log_level, old.log_format, old.log_file or None)
            if self.server is not None:
                self.server.set_access(old.allowed_uids, _gids(old.allowed_groups))
                self.server.max_connections = old.max_connections
            if "admin_groups" in applied:
                self.access = AccessPolicy(old.admin_groups)
            await self._reload_workers("workers" in applied)
            log.info("config_reloaded", changed=applied)
            self.status.changed()
            return True
        finally:
            self.notifier.notify("READY=1", f"STATUS={self.status.last or 'ready'}")

    async def _reload_workers(self, changed: bool) -> None:
        """Apply the file's ``workers`` unless `queuectl worker start/stop` set a count.

        Precedence: the count set at run time (kept in the store, across restarts) >
        ``--workers`` > ``QUEUECTLD_WORKERS`` > the file's ``workers``.
        """
        stored = await self.committer.call(lambda s: s.get_settings())
        runtime = _runtime_workers(stored, self.config.node_id)
        if runtime is not None:
            if changed:
                log.warning(
                    "workers_not_reloaded",
                    configured=self.config.workers,
                    running=runtime,
                    reason="set at run time by `queuectl worker start/stop`, which wins",
                )
            return
        if self.config.workers != self.supervisor.desired:
            log.info("workers_scaled", desired=self.config.workers, was=self.supervisor.desired)
            await self.supervisor.scale(self.config.workers)
            self.dispatcher.wake()
            self.status.changed()

    # -- start-up helpers -----------------------------------------------------

    def _signal_ready(self) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, b"READY\n")
            os.close(self.ready_fd)
        self.ready_fd = None

    def _lock_store(self) -> None:
        """Refuse to start if another daemon holds this store."""
        path = Path(self.config.lock_path())
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Unavailable(
                f"another queuectld is using {self.config.lock_subject()}; stop it first"
            ) from None
        self._lock_fd = fd

    def _unlock_store(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _open_store(cfg: DaemonConfig) -> Store:
    """The configured store, opened: PostgreSQL from ``store_url``, else the SQLite file."""
    if not cfg.uses_postgres:
        return open_store(cfg.database)
    try:
        return open_store(cfg.store_url, cfg.store_schema)
    except StoreUnavailable:
        raise StoreUnavailable(
            f"cannot reach the PostgreSQL store at {cfg.store_name()}; start it or fix [store] url"
        ) from None


def _nothing(store: object) -> None:
    """A store call that does nothing: the watchdog's proof that the store thread answers."""


def _runtime_workers(stored: dict[str, str], node_id: str) -> int | None:
    """The worker count `queuectl worker start/stop` stored for this daemon, if any (a
    bad value: none); before clusters it was stored under one key for all."""
    value = stored.get(handlers.workers_setting(node_id), stored.get(handlers.WORKERS_SETTING, ""))
    return int(value) if value.isdigit() else None


def _gids(groups: list[str]) -> list[int]:
    return [gid for gid in (group_id(g) for g in groups) if gid is not None]


def run_daemon(
    config: DaemonConfig, ready_fd: int | None = None, loader: ConfigLoader | None = None
) -> int:
    """Run a daemon on a fresh event loop until it stops; return the exit status.

    ``loader`` re-reads the configuration on SIGHUP (the same file, environment and
    flags as at start); without it SIGHUP only reopens the log file.
    """
    daemon = Daemon(config, ready_fd, loader)
    try:
        return asyncio.run(daemon.run())
    except QueuectlError as exc:
        log.error("daemon_failed", error=exc.message)
        return 1
