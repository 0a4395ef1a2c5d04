"""The wire format alone: frames, the hello exchange, msgpack in and out.

A frame is a 4-byte big-endian length, then one msgpack map of at most
``MAX_FRAME_BYTES``. This module is what every peer needs to talk at all, kept to
the standard library and msgpack so that the fast ``queuectl enqueue`` path
(:mod:`queuectl.fastcli`) can import the real thing in a few milliseconds; the
message classes and their validation live in :mod:`queuectl.protocol`, which
re-exports everything here.
"""

from __future__ import annotations

import struct

import msgpack

from queuectl.errors import InvalidRequest, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import; only the checker needs it
    from collections.abc import Mapping
    from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 4 * 1024 * 1024
HEADER = struct.Struct(">I")
CLIENT_NAME = "queuectl"


def pack(obj: Mapping[str, Any]) -> bytes:
    """Encode one message as a length-prefixed frame."""
    try:
        body: bytes = msgpack.packb(obj, use_bin_type=True)
    except UnicodeEncodeError:
        # Text from argv or JSON may hold undecodable bytes (as lone surrogates).
        raise InvalidRequest(
            "the request holds text that is not valid UTF-8; commands and ids must be UTF-8"
        ) from None
    except OverflowError:
        # msgpack carries integers of at most 64 bits; Python's may be longer.
        raise InvalidRequest(
            "the request holds an integer too large to send (the limit is 64 bits)"
        ) from None
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"message of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
        )
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, max_bytes: int = MAX_FRAME_BYTES) -> int:
    """Decode and check a frame header; a declared length over the limit is a protocol error."""
    (length,) = HEADER.unpack(header)
    if length == 0 or length > max_bytes:
        raise ProtocolError(f"frame of {length} bytes is outside 1..{max_bytes}")
    return int(length)


def unpack(body: bytes) -> dict[str, Any]:
    """Decode one frame body; anything but a msgpack map with string keys is refused."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except UnicodeDecodeError:
        raise ProtocolError(
            "the message holds a string that is not valid UTF-8; send text as UTF-8"
        ) from None
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must hold a map")
    if not all(isinstance(key, str) for key in obj):
        raise ProtocolError("a frame's map keys must be strings")
    return obj


def request_id(body: bytes) -> int:
    """The ``rid`` of a frame body that :func:`unpack` refused, or 0 if it has none.

    Strings are left undecoded here, so a request holding invalid UTF-8 still names its
    rid and its error reply reaches the caller waiting for it.
    """
    try:
        obj = msgpack.unpackb(body, raw=True, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types on garbage
        return 0
    rid = obj.get(b"rid") if isinstance(obj, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else 0


class FrameBuffer:
    """Incremental frame decoder for blocking readers (the client, the worker)."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return every message now complete, in order."""
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            length = frame_length(bytes(self._buf[: HEADER.size]), self._max)
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(unpack(bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return out


def hello(client: str = CLIENT_NAME, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    """The first frame a client sends."""
    return {"hello": client, "version": version}


def hello_reply(server: str, version: int = PROTOCOL_VERSION, **extra: Any) -> dict[str, Any]:
    """The daemon's answer to a hello; ``extra`` carries optional facts (``draining``, ``pid``)."""
    return {"hello": server, "version": version, "ok": True, **extra}


def error_frame(rid: int, code: str, message: str) -> dict[str, Any]:
    """A failed reply (``rid`` 0 answers a hello)."""
    return {"rid": rid, "ok": False, "error": {"code": code, "message": message}}


def error_text(msg: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(code, message)`` of a failed reply; a malformed one is a protocol error."""
    err = msg.get("error")
    if not isinstance(err, dict):
        return ProtocolError.code, "queuectld sent a malformed reply"
    return str(err.get("code")), str(err.get("message"))
