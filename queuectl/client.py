"""The Python client: one method per request, over the daemon's Unix socket.

>>> from queuectl import Client
>>> with Client.connect() as c:
...     job = c.enqueue("echo hello", id="job1")

``Client.connect()`` finds the socket (flag, ``$QUEUECTL_SOCKET``, the per-user
``~/.queuectl/queuectld.sock``, then the system ``/run/queuectl/queuectld.sock``)
and, for the per-user socket, starts a daemon in the background when none answers,
as task-spooler does (commands racing to do so take turns on a lock in the home,
and the later ones use the daemon the first started). ``QUEUECTL_NO_AUTOSTART=1``
turns that off. A draining daemon refuses new work with
:class:`~queuectl.errors.ShuttingDown`; an autostarting client then waits for it to
exit, starts a new one and asks again.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from queuectl import paths
from queuectl.errors import (
    NoDaemon,
    NotFound,
    ProtocolError,
    QueuectlError,
    ShuttingDown,
    Unavailable,
    error_from_code,
)
from queuectl.paths import SYSTEM_SOCKET, autostart_enabled, resolve_socket
from queuectl.protocol import (
    DEFAULT_QUEUE,
    EnqueueArgs,
    FrameBuffer,
    Hello,
    HelloReply,
    JobView,
    NodeView,
    Op,
    PurgeView,
    QueueView,
    Reply,
    Request,
    ScheduleView,
    StatusView,
    WaitView,
    WorkersView,
    pack,
)

AUTOSTART_TIMEOUT_S = 15.0
# A `wait` with a timeout is answered by then; this much more before the client gives up.
WAIT_REPLY_SLACK_S = 30.0
# How long a command waits for a draining daemon to exit before starting a new one.
DRAIN_WAIT_S = 60.0
# Requests never sent again to a new daemon when a draining one refuses them: those it
# answers (ping, status), and shutdown (starting a daemon to stop it makes no sense).
NOT_RETRIED_AFTER_DRAIN = frozenset({Op.PING, Op.STATUS, Op.SHUTDOWN})


def user_home() -> Path:
    return Path(paths.user_home())


class Client:
    """A connection to queuectld. Not thread-safe; use one per thread."""

    def __init__(self, sock: socket.socket, server: str) -> None:
        self._sock = sock
        self._frames = FrameBuffer()
        self._pending: list[dict[str, Any]] = []
        self._rids = itertools.count(1)
        self.server = server
        # Set by the hello: the daemon is draining (pid: the process to wait for).
        self.draining = False
        self.server_pid: int | None = None
        # The per-user socket this client may start a daemon on, or None.
        self._autostart_path: str | None = None
        self._timeout = 60.0

    # -- connecting -----------------------------------------------------------

    @classmethod
    def connect(
        cls,
        socket_path: str | None = None,
        autostart: bool | None = None,
        timeout: float = 60.0,
        *,
        off_by: str | None = None,
    ) -> Client:
        """Connect (and say hello); start a per-user daemon first if allowed and needed.

        ``off_by`` names the flag that turned autostart off, for the error message.
        """
        path, per_user = resolve_socket(socket_path)
        hint = ""
        if autostart is None:
            autostart = autostart_enabled()
            if not autostart:
                hint = " (or unset QUEUECTL_NO_AUTOSTART)"
        elif not autostart and off_by:
            hint = f" (or drop {off_by})"
        if not per_user:
            hint = ""  # only the per-user socket is ever autostarted
        may_start = autostart and per_user
        problem = paths.socket_path_problem(path)
        if problem is not None:
            raise Unavailable(problem)
        try:
            client = cls._open(path, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            if not may_start:
                raise NoDaemon(
                    f"no queuectld is listening on {path}; start one with `queuectld`{hint}"
                ) from None
            client = _autostart(path, timeout)
        if may_start:
            client._autostart_path = path
        return client

    @classmethod
    def _open(cls, path: str, timeout: float) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except PermissionError:
            sock.close()
            raise Unavailable(paths.permission_problem(path)) from None
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise
        except NotADirectoryError:
            sock.close()
            raise Unavailable(
                f"{os.path.dirname(path)} is not a directory; "
                "point QUEUECTL_HOME (or QUEUECTL_SOCKET) somewhere else"
            ) from None
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        client = cls(sock, "")
        client._timeout = timeout
        try:
            client._send(Hello().to_wire())
            msg = client._recv()
        except (ConnectionError, TimeoutError) as exc:
            sock.close()
            raise Unavailable(f"queuectld on {path} closed the connection: {exc}") from None
        if msg.get("ok") is False:
            sock.close()
            reply = Reply.from_wire({"rid": 0, **msg})
            assert reply.error is not None
            raise error_from_code(reply.error.code, reply.error.message)
        client.server = str(msg.get("hello", ""))
        HelloReply(int(msg.get("version", 0)), client.server)
        client.draining = msg.get("draining") is True
        pid = msg.get("pid")
        client.server_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        return client

    def _replace_draining_daemon(self, refusal: ShuttingDown) -> None:
        """Wait (bounded) for the draining daemon to exit, then connect to a new one."""
        assert self._autostart_path is not None
        if self.server_pid is None:
            raise refusal  # a daemon that does not say its pid: nothing to wait for
        if not _wait_for_exit(self.server_pid, DRAIN_WAIT_S):
            refusal.message += f"; it did not stop within {DRAIN_WAIT_S:g}s, try again later"
            raise refusal
        self._sock.close()
        fresh = _autostart(self._autostart_path, self._timeout)
        if fresh.draining:
            fresh.close()
            raise refusal
        self._sock, self._frames, self._pending = fresh._sock, fresh._frames, fresh._pending
        self.server, self.draining, self.server_pid = fresh.server, False, None

    def close(self) -> None:
        self._sock.close()

    def abort(self) -> None:
        """End the connection from another thread: a read blocked in it returns at once."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected: nothing is blocked on it

    def idle_and_open(self) -> bool:
        """True unless the daemon has hung up this idle connection (looked at, not waited for).

        A long-lived client (the HTTP gateway keeps one per thread) asks before reusing
        a connection, so that a restarted daemon costs a reconnect, not a failed request.
        """
        if self._pending:
            return False  # an unread frame on an idle connection: start afresh
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable  # an idle connection only turns readable at EOF

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- framing --------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        self._sock.sendall(pack(msg))

    def _recv(self) -> dict[str, Any]:
        while not self._pending:
            data = self._sock.recv(65536)
            if not data:
                raise Unavailable("queuectld closed the connection")
            self._pending.extend(self._frames.feed(data))
        return self._pending.pop(0)

    def call(self, op: Op, **args: Any) -> Any:
        """Send one request and return its result, or raise the error the daemon reported."""
        try:
            return self._call_once(op, args)
        except ShuttingDown as refusal:
            # Refused without effect by a draining daemon: with autostart, wait for it
            # to exit and ask its successor (`queuectl shutdown; queuectl enqueue ...`).
            if self._autostart_path is None or op in NOT_RETRIED_AFTER_DRAIN:
                raise
            self._replace_draining_daemon(refusal)
            return self._call_once(op, args)

    def _call_once(self, op: Op, args: dict[str, Any]) -> Any:
        rid = next(self._rids)
        self._send(Request(rid, op, args).to_wire())
        while True:
            msg = self._recv()
            if msg.get("rid") != rid or "event" in msg:
                continue
            reply = Reply.from_wire(msg)
            if reply.error is not None:
                raise error_from_code(reply.error.code, reply.error.message)
            return reply.result

    def stream(self, op: Op, **args: Any) -> Iterator[dict[str, Any]]:
        """Send a streaming request and yield its events until the daemon ends the stream."""
        rid = next(self._rids)
        self._send(Request(rid, op, args).to_wire())
        while True:
            msg = self._recv()
            if msg.get("rid") != rid:
                continue
            if "event" in msg:
                yield msg["event"]
                continue
            reply = Reply.from_wire(msg)
            if reply.error is not None:
                raise error_from_code(reply.error.code, reply.error.message)
            return

    # -- requests -------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call(Op.PING)
        return result

    def enqueue(
        self,
        command: str,
        id: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        cwd: str | None = None,
        *,
        run_at: float | None = None,
        priority: int = 0,
        queue: str = DEFAULT_QUEUE,
        unique_key: str | None = None,
        env: dict[str, str] | None = None,
        idempotent: bool = True,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
        memory: str | None = None,
        cpus: float | None = None,
        max_procs: int | None = None,
        after: list[str] | None = None,
        after_any: list[str] | None = None,
    ) -> JobView:
        """Add one job; returns it once it is durably stored.

        ``delay`` (seconds) or ``run_at`` (Unix time) make it wait; ``priority`` (higher
        first) and ``queue`` place it; with ``unique_key``, an unfinished job holding the
        key is returned instead (its ``existing`` is True) and nothing is stored.
        ``memory`` ("512M"), ``cpus`` and ``max_procs`` limit it (docs/jobs.md). With
        ``after`` it is ``blocked`` until those jobs completed (cancelled if one ends dead
        or cancelled); with ``after_any``, until those jobs are final, however they end.
        """
        spec = EnqueueArgs(
            command,
            id=id,
            max_retries=max_retries,
            timeout=timeout,
            delay=delay,
            run_at=run_at,
            cwd=cwd,
            idempotent=idempotent,
            priority=priority,
            queue=queue,
            unique_key=unique_key,
            env=env,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            jitter=jitter,
            memory=memory,
            cpus=cpus,
            max_procs=max_procs,
            after=after,
            after_any=after_any,
        )
        defaults = {"idempotent": True, "priority": 0, "queue": DEFAULT_QUEUE}
        return self.enqueue_spec(
            {
                k: v
                for k, v in asdict(spec).items()
                if v is not None and not (k in defaults and v == defaults[k])
            }
        )

    def enqueue_spec(self, spec: dict[str, Any]) -> JobView:
        """Add one job given as a wire map (the CLI's JSON form); the daemon validates it."""
        result: JobView = self.call(Op.ENQUEUE, **spec)
        return result

    def enqueue_batch(self, specs: list[dict[str, Any]]) -> list[str]:
        """Add many jobs in one transaction (all or none); returns their ids."""
        result = self.call(Op.ENQUEUE_BATCH, jobs=specs)
        return list(result["ids"])

    def get_job(self, job_id: str) -> JobView:
        result: JobView = self.call(Op.GET_JOB, id=job_id)
        return result

    def list_jobs(
        self,
        state: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        queue: str | None = None,
        since: float | None = None,
        sort: str = "oldest",
    ) -> tuple[list[JobView], int]:
        """Jobs (of one state, one queue, created since a Unix time) in ``sort`` order
        (oldest, newest, priority, run_at), and the total matching count."""
        args: dict[str, Any] = {"limit": limit, "offset": offset, "sort": sort}
        for key, value in (("state", state), ("queue", queue), ("since", since)):
            if value is not None:
                args[key] = value
        result = self.call(Op.LIST_JOBS, **args)
        return list(result["jobs"]), int(result["total"])

    def cancel(self, *job_ids: str) -> list[JobView]:
        """Cancel jobs that have not started (pending, waiting, failed): all or none."""
        result = self.call(Op.CANCEL, ids=list(job_ids))
        return list(result["jobs"])

    def kill(self, *job_ids: str, signal: str = "TERM", retry: bool = False) -> list[str]:
        """Signal running jobs' process groups (SIGKILL after the grace period); they end
        ``cancelled``, or follow their retry policy with ``retry``. Returns the ids."""
        result = self.call(Op.KILL, ids=list(job_ids), signal=signal, retry=retry)
        return list(result["killing"])

    def retry(self, *job_ids: str) -> list[JobView]:
        """Run finished jobs (completed, dead, cancelled) again, keeping their history."""
        result = self.call(Op.RETRY, ids=list(job_ids))
        return list(result["jobs"])

    def purge(
        self, state: str, older_than: float, queue: str | None = None, dry_run: bool = False
    ) -> PurgeView:
        """Remove jobs in a final ``state`` unchanged for ``older_than`` seconds, with their
        log files (``dry_run``: only count them); how many, and the bytes freed."""
        args: dict[str, Any] = {"state": state, "older_than": older_than, "dry_run": dry_run}
        if queue is not None:
            args["queue"] = queue
        result: PurgeView = self.call(Op.PURGE, **args)
        return result

    def vacuum(self) -> dict[str, Any]:
        """Compact the queue database (the daemon waits for it); sizes before and after."""
        result: dict[str, Any] = self.call(Op.VACUUM)
        return result

    def schedule_add(
        self,
        name: str,
        cron: str,
        job: dict[str, Any],
        *,
        tz: str = "UTC",
        overlap: str = "skip",
        catch_up: str = "latest",
        replace: bool = False,
    ) -> ScheduleView:
        """Enqueue ``job`` (an enqueue map without id, delay or parents) at each tick of
        ``cron`` in time zone ``tz``; ``replace`` changes an existing schedule."""
        result: ScheduleView = self.call(
            Op.SCHEDULE_ADD,
            name=name,
            cron=cron,
            job=job,
            tz=tz,
            overlap=overlap,
            catch_up=catch_up,
            replace=replace,
        )
        return result

    def schedules(self) -> list[ScheduleView]:
        result: list[ScheduleView] = self.call(Op.SCHEDULE_LIST)
        return result

    def schedule(self, name: str) -> ScheduleView:
        result: ScheduleView = self.call(Op.SCHEDULE_GET, name=name)
        return result

    def pause_schedule(self, name: str) -> ScheduleView:
        result: ScheduleView = self.call(Op.SCHEDULE_SET, name=name, paused=True)
        return result

    def resume_schedule(self, name: str) -> ScheduleView:
        """Resume from the next tick (the ticks of the pause are not caught up)."""
        result: ScheduleView = self.call(Op.SCHEDULE_SET, name=name, paused=False)
        return result

    def remove_schedule(self, name: str) -> None:
        """Remove a schedule; the jobs it made stay."""
        self.call(Op.SCHEDULE_REMOVE, name=name)

    def run_schedule(self, name: str) -> JobView:
        """Enqueue the schedule's job once, now (its ticks do not change)."""
        result: JobView = self.call(Op.SCHEDULE_RUN, name=name)
        return result

    def queues(self) -> list[QueueView]:
        """Every queue with jobs or settings: counts by state, limits, paused or not."""
        result: list[QueueView] = self.call(Op.QUEUE_LIST)
        return result

    def set_queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: str | None = None,
        paused: bool | None = None,
    ) -> QueueView:
        """Change a queue's settings (``concurrency=0`` or ``rate=""`` removes a limit)."""
        args: dict[str, Any] = {"name": name}
        for key, value in (("concurrency", concurrency), ("rate", rate), ("paused", paused)):
            if value is not None:
                args[key] = value
        result: QueueView = self.call(Op.QUEUE_SET, **args)
        return result

    def pause_queue(self, name: str) -> QueueView:
        """Start nothing more from this queue; its running jobs finish."""
        return self.set_queue(name, paused=True)

    def resume_queue(self, name: str) -> QueueView:
        return self.set_queue(name, paused=False)

    def status(self) -> StatusView:
        result: StatusView = self.call(Op.STATUS)
        return result

    def nodes(self) -> list[NodeView]:
        """Every daemon sharing the store: live, gone (no heartbeat) or stopped."""
        result: list[NodeView] = self.call(Op.NODES)
        return result

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call(Op.METRICS)
        return result

    def set_workers(self, count: int) -> WorkersView:
        result: WorkersView = self.call(Op.WORKERS_SET, count=count)
        return result

    def stop_workers(self) -> WorkersView:
        result: WorkersView = self.call(Op.WORKERS_STOP)
        return result

    def dlq_retry(self, job_id: str) -> JobView:
        result: JobView = self.call(Op.DLQ_RETRY, id=job_id)
        return result

    def logs(self, job_id: str) -> Iterator[bytes]:
        """A job's whole log, chunk by chunk. A job that ran on another daemon of the
        cluster has its log there: it is read through that daemon's socket when this
        process may use it, else ``NotFound`` says which host has it."""
        offset = 0
        while True:
            chunk = self.call(Op.LOGS, id=job_id, offset=offset)
            if offset == 0 and chunk.get("node"):
                yield from self._logs_elsewhere(job_id, chunk)
                return
            data: bytes = chunk["data"]
            if data:
                yield data
            offset += len(data)
            if not data or offset >= chunk["size"]:
                return

    def _logs_elsewhere(self, job_id: str, chunk: dict[str, Any]) -> Iterator[bytes]:
        with self._daemon_of(job_id, chunk) as other:
            yield from other.logs(job_id)

    def _daemon_of(self, job_id: str, where: dict[str, Any]) -> Client:
        """A client of the daemon of the cluster that ran the job (``where``: its
        ``node``, ``host`` and ``socket``), when this process can reach its socket; else
        ``NotFound`` saying which host keeps the job's log."""
        node, host, path = where.get("node"), where.get("host"), where.get("socket")
        if path and path != self.server:
            try:
                return Client.connect(path, autostart=False, timeout=self._timeout)
            except QueuectlError:
                pass
        place = f"host {host} (daemon {node})" if host else f"daemon {node}"
        raise NotFound(
            f"job {job_id!r} ran on {place}, which keeps its log; run `queuectl logs "
            f"{job_id}` there"
        )

    def follow_logs(self, job_id: str) -> Iterator[tuple[str, bytes]]:
        """A job's output as it is written, until the job is final: ``(stream, bytes)``
        with ``stream`` ``stdout`` or ``stderr``; ``log`` for its log file's blocks (a
        job already final, or one that ended before any output could be forwarded)."""
        with self._blocking(None):
            for event in self.stream(Op.FOLLOW_LOGS, id=job_id):
                if event.get("type") == "output":
                    yield str(event["stream"]), bytes(event["data"])
                elif event.get("type") == "elsewhere":
                    # Another daemon of the cluster runs (or ran) it: follow it there.
                    other = self._daemon_of(job_id, event)
                    with other:
                        yield from other.follow_logs(job_id)
                    return

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> WaitView:
        """Block until every job is final (``completed``, ``dead``, ``cancelled``), or
        ``timeout`` seconds.

        Returns where each job stands, in the order given, and ``timed_out``.
        """
        args: dict[str, Any] = {"ids": list(ids)}
        if timeout is not None:
            args["timeout"] = timeout
        with self._blocking(None if timeout is None else timeout + WAIT_REPLY_SLACK_S):
            result: WaitView = self.call(Op.WAIT, **args)
        return result

    @contextmanager
    def _blocking(self, timeout: float | None) -> Iterator[None]:
        """Let a request that waits for jobs take ``timeout`` seconds (None: no limit)."""
        self._sock.settimeout(timeout)
        try:
            yield
        finally:
            self._sock.settimeout(self._timeout)

    def config_get(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(Op.CONFIG_GET, key=key)
        return result

    def config_set(self, key: str, value: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(Op.CONFIG_SET, key=key, value=value)
        return result

    def config_list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call(Op.CONFIG_LIST)
        return result

    def watch(self, until_idle: bool = False) -> Iterator[dict[str, Any]]:
        """Job events as they happen; ``until_idle`` ends once nothing is left to run."""
        return self.stream(Op.WATCH, until_idle=until_idle)

    def shutdown(self) -> dict[str, Any]:
        """Ask the daemon to drain and exit."""
        result: dict[str, Any] = self.call(Op.SHUTDOWN)
        return result


def prepare_home() -> Path:
    """The per-user home, created if missing; a one-sentence error if it cannot be."""
    home = user_home()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):
        raise Unavailable(
            f"the queuectl home {home} is not a directory; set QUEUECTL_HOME to one"
        ) from None
    except OSError as exc:
        raise Unavailable(
            f"cannot create the queuectl home {home}: {exc.strerror or exc}; "
            "set QUEUECTL_HOME to a directory you can write"
        ) from None
    if not home.is_dir():
        raise Unavailable(f"the queuectl home {home} is not a directory; set QUEUECTL_HOME to one")
    return home


def _autostart(path: str, timeout: float) -> Client:
    """Start the per-user daemon unless a racing command already has; then connect.

    Parallel first commands take turns on a lock in the home: the first starts the
    daemon, the others find it answering once they get the lock.
    """
    home = prepare_home()
    try:
        lock = os.open(home / "autostart.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise Unavailable(f"cannot use the queuectl home {home}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held at most AUTOSTART_TIMEOUT_S by a winner
        try:
            return Client._open(path, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        start_daemon(path)
        try:
            return Client._open(path, timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise Unavailable(
                f"queuectld started but {path} does not answer: {exc.strerror}"
            ) from None
    finally:
        os.close(lock)  # releases the lock


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited; False if it still runs after ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (old kernel, seccomp): look now and then
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
            time.sleep(0.05)
        return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def start_daemon(socket_path: str) -> None:
    """Start a per-user ``queuectld --daemon`` and wait until it reports ready."""
    home = prepare_home()
    read_fd, write_fd = os.pipe()
    cmd = [
        sys.executable,
        "-m",
        "queuectld",
        "--daemon",
        "--home",
        str(home),
        "--socket",
        socket_path,
        "--log-file",
        str(home / "queuectld.log"),
        "--ready-fd",
        str(write_fd),
    ]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
    # The pipe reaches EOF when the daemon has written READY, or died without doing so.
    answer = b""
    deadline = time.monotonic() + AUTOSTART_TIMEOUT_S
    with os.fdopen(read_fd, "rb", buffering=0) as ready:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([ready], [], [], left)[0]:
                break
            data = ready.read(64)
            if not data:
                break
            answer += data
    try:
        _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        err = b"queuectld did not become ready in time"
    if b"READY" not in answer:
        detail = err.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"see {home / 'queuectld.log'}"
        raise Unavailable(f"could not start queuectld: {reason}")


__all__ = ["SYSTEM_SOCKET", "Client", "ProtocolError", "resolve_socket", "start_daemon"]
