"""The control socket: stale-socket probe, bind, chmod, listen, peer check, framing.

Each connection: peer credentials are checked, the client says hello, then requests
are read one frame at a time and each is answered by its own task (so requests a
client pipelines share a group commit). A malformed frame ends that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import grp
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from queuectl.errors import (
    InternalError,
    InvalidRequest,
    PermissionDenied,
    ProtocolError,
    QueuectlError,
    Unavailable,
)
from queuectl.protocol import (
    ARGS_BY_OP,
    HEADER,
    PROTOCOL_VERSION,
    ErrorBody,
    EventFrame,
    Hello,
    HelloReply,
    Reply,
    Request,
    frame_length,
    pack,
    parse_args,
    request_id,
    unpack,
)
from queuectld import __version__

log = structlog.get_logger("queuectld.server")

HANDSHAKE_TIMEOUT_S = 10.0
# A frame's body must arrive within this long once its header has (slow-client guard).
BODY_TIMEOUT_S = 30.0
MAX_IN_FLIGHT = 256
# At close, how long streams (watch) get to send their last frames.
STREAM_END_S = 1.0


@dataclass(frozen=True)
class Peer:
    """A connected client as the kernel reports it (SO_PEERCRED), never as it claims."""

    pid: int
    uid: int
    gid: int
    # Supplementary groups from SO_PEERGROUPS, fixed at connect(); None if unavailable.
    supplementary: frozenset[int] | None = None

    def groups(self) -> set[int]:
        """The peer's primary and supplementary group ids (from /proc, read at connect)."""
        gids = {self.gid}
        if self.supplementary is not None:
            return gids | self.supplementary
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("Groups:"):
                        gids.update(int(g) for g in line.split()[1:])
                        break
        except OSError:
            pass  # the peer already exited: only its primary group is known
        return gids


_caller: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("caller", default=None)


def caller() -> Peer | None:
    """The client whose request is being handled."""
    return _caller.get()


def caller_uid() -> int | None:
    """The uid of the client whose request is being handled (from SO_PEERCRED)."""
    peer = _caller.get()
    return None if peer is None else peer.uid


def peer_credentials(sock: socket.socket) -> Peer:
    """The connecting process's pid/uid/gid as the kernel reports them (not as it claims)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, _peer_groups(sock))


# Linux >= 4.13: the peer's supplementary groups as they were at connect(), from the
# kernel, so no race with the peer exiting (or its pid being reused) as with /proc.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


def _peer_groups(sock: socket.socket) -> frozenset[int] | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:
        return None  # an old kernel, or more than 256 groups: Peer.groups() reads /proc
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))


RequestHandler = Callable[[Request, Any], Awaitable[Any]]
StreamHandler = Callable[[Request, Any], AsyncIterator[dict[str, Any]]]


class ControlServer:
    """The Unix-socket server; what to do with a request is the daemon's business."""

    def __init__(
        self,
        path: str,
        mode: int,
        allowed_uids: list[int],
        max_connections: int,
        handle: RequestHandler,
        stream: StreamHandler,
        is_stream: Callable[[Request], bool],
        *,
        allowed_gids: Iterable[int] = (),
        inherited: socket.socket | None = None,
        group: str = "",
        waiting_ops: frozenset[str] = frozenset({"watch"}),
    ) -> None:
        self.path = path
        self.mode = mode
        self.allowed_uids = {os.getuid(), 0, *allowed_uids}
        self.allowed_gids = set(allowed_gids)
        # A listening socket systemd passed (socket activation): used as it is, and
        # its file is systemd's, never unlinked by us.
        self.inherited = inherited
        self.owns_path = False
        self.group = group  # socket group name or gid (socket_group), given the socket
        self.max_connections = max_connections
        self._handle = handle
        self._stream = stream
        self._is_stream = is_stream
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        # Draining: still listening, so that clients learn the daemon is stopping (the
        # handlers refuse new work) instead of finding no socket until it has exited.
        self.draining = False
        self._streams: set[asyncio.Task[None]] = set()
        # Requests that wait for events (streams, `wait`): they end with their
        # connection, and at close get STREAM_END_S to send their last frame.
        self.waiting_ops = waiting_ops

    def set_access(self, allowed_uids: Iterable[int], allowed_gids: Iterable[int]) -> None:
        """Change who may connect (SIGHUP); connections already open are kept."""
        self.allowed_uids = {os.getuid(), 0, *allowed_uids}
        self.allowed_gids = set(allowed_gids)

    def allows(self, peer: Peer) -> bool:
        """The daemon's own uid, root, ``allowed_uids`` and members of ``allowed_gids``."""
        if peer.uid in self.allowed_uids:
            return True
        return bool(self.allowed_gids and peer.groups() & self.allowed_gids)

    async def start(self) -> None:
        """Listen: on the socket systemd passed, or bind one (replacing a stale one)."""
        if self.inherited is not None:
            name = self.inherited.getsockname()
            if isinstance(name, str) and name:
                self.path = name
            self._server = await asyncio.start_unix_server(
                self._serve, sock=self.inherited, limit=2**16
            )
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        parent = path.parent.stat()
        if parent.st_mode & stat.S_IWOTH:
            # Anyone could replace the socket there and collect the commands sent to it.
            raise Unavailable(
                f"the socket's directory {path.parent} is writable by others; "
                "put the socket in a directory only its owner can write"
            )
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise Unavailable(f"{path} exists and is not a socket; remove it or pick another")
            if _answers(path):
                raise Unavailable(f"another queuectld is already listening on {path}")
            path.unlink()  # stale: left by a daemon that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a restrictive umask so the socket is never briefly world-accessible.
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, self.mode)
        if self.group:
            os.chown(path, -1, _gid(self.group))
        self.owns_path = True
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=2**16)

    async def stop_accepting(self) -> None:
        """The daemon begins to drain: keep answering, say so in every hello."""
        self.draining = True

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.owns_path:
            self.owns_path = False
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def close(self) -> None:
        self.draining = True
        await self._stop_listening()
        if self._streams:
            # Streams end once the daemon closed its event bus: let their last frames
            # (the `stopped` event, the reply) go out before the connections close.
            await asyncio.wait(list(self._streams), timeout=STREAM_END_S)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        tasks: set[asyncio.Task[None]] = set()
        try:
            sock = writer.get_extra_info("socket")
            peer = peer_credentials(sock)
            if not self.allows(peer):
                log.warning("connection_refused", uid=peer.uid, gid=peer.gid, pid=peer.pid)
                err = PermissionDenied(f"uid {peer.uid} may not use this queuectld")
                await _refuse(reader, writer, err)
                return
            if self.connections > self.max_connections:
                err2 = Unavailable("queuectld has too many open connections; retry shortly")
                await _refuse(reader, writer, err2)
                return
            _caller.set(peer)
            hello = Hello.from_wire(await asyncio.wait_for(_read(reader), HANDSHAKE_TIMEOUT_S))
            if hello.version != PROTOCOL_VERSION:
                msg = f"protocol version {hello.version} is not supported (this daemon speaks 1)"
                await _send(writer, Reply(0, error=ErrorBody(ProtocolError.code, msg)).to_wire())
                return
            server = f"queuectld {__version__}"
            if self.draining:  # the pid lets a client wait for this daemon to exit
                hello_reply = HelloReply(PROTOCOL_VERSION, server, draining=True, pid=os.getpid())
            else:
                hello_reply = HelloReply(PROTOCOL_VERSION, server)
            await _send(writer, hello_reply.to_wire())
            limit = asyncio.Semaphore(MAX_IN_FLIGHT)
            while True:
                frame = await _read(reader)
                await limit.acquire()
                task = asyncio.create_task(self._answer(writer, frame, limit))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                op = frame.get("op")  # unchecked yet: anything msgpack can carry
                if isinstance(op, str) and op in self.waiting_ops:
                    self._streams.add(task)
                    task.add_done_callback(self._streams.discard)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away or stalled
        except _FrameRefused as exc:
            # The frame was read whole, so the stream is still in step: say why before
            # hanging up (the client would otherwise see only a closed connection).
            log.info("connection_dropped", reason=str(exc))
            error = ErrorBody(exc.error.code, exc.error.message)
            with contextlib.suppress(ConnectionError, ProtocolError):
                await _send(writer, Reply(exc.rid, error=error).to_wire())
        except ProtocolError as exc:
            log.info("connection_dropped", reason=str(exc))
        except Exception:
            log.exception("connection_failed")
        finally:
            for task in tasks:
                task.cancel()
            self.connections -= 1
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, msg: dict[str, Any], limit: asyncio.Semaphore
    ) -> None:
        try:
            reply = await self._reply_for(writer, msg)
            try:
                await _send(writer, reply.to_wire())
            except ProtocolError as exc:  # the result does not fit in a frame
                err = InvalidRequest(f"the reply is too large ({exc.message}); ask for less")
                await _send(
                    writer, Reply(reply.rid, error=ErrorBody(err.code, err.message)).to_wire()
                )
        except ConnectionError:
            pass
        finally:
            limit.release()

    async def _reply_for(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> Reply:
        raw_rid = msg.get("rid")
        rid: int = raw_rid if isinstance(raw_rid, int) else 0
        try:
            req = Request.from_wire(msg)
            rid = req.rid
            args = parse_args(ARGS_BY_OP[req.op], req.args, req.op.value)
            if self._is_stream(req):
                async for event in self._stream(req, args):
                    await _send(writer, EventFrame(rid, event).to_wire())
                return Reply(rid, result=None)
            if req.op.value in self.waiting_ops:
                return Reply(rid, result=await self._handle(req, args))
            # Shielded: a request once started is carried through even if its client
            # hangs up (a config_set must not end committed but not applied).
            return Reply(rid, result=await asyncio.shield(self._handle(req, args)))
        except QueuectlError as exc:
            return Reply(rid, error=ErrorBody(exc.code, exc.message))
        except ConnectionError:
            raise
        except Exception as exc:
            log.exception("request_failed", rid=rid)
            err = InternalError(f"internal error: {type(exc).__name__}; see the daemon log")
            return Reply(rid, error=ErrorBody(err.code, err.message))


class _FrameRefused(Exception):
    """A whole frame arrived but could not be decoded: answered, then the connection ends."""

    def __init__(self, rid: int, error: ProtocolError) -> None:
        super().__init__(error.message)
        self.rid = rid
        self.error = error


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await reader.readexactly(HEADER.size)
    length = frame_length(header)
    body = await asyncio.wait_for(reader.readexactly(length), BODY_TIMEOUT_S)
    try:
        return unpack(body)
    except ProtocolError as exc:
        raise _FrameRefused(request_id(body), exc) from None


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, err: QueuectlError
) -> None:
    """Answer the client's hello with ``err``.

    The hello is read first (briefly): closing with it unread would make the client's
    write fail (EPIPE) before it could read why it was turned away.
    """
    with contextlib.suppress(Exception):
        await asyncio.wait_for(_read(reader), 1.0)
    await _send(writer, Reply(0, error=ErrorBody(err.code, err.message)).to_wire())


async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(pack(msg))
    await writer.drain()


def _gid(group: str) -> int:
    """A group name or number as a gid; an unknown name is a configuration error."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise Unavailable(f"socket_group {group!r} does not exist") from None


def _answers(path: Path) -> bool:
    """True if something accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
