"""The ``queuectl`` console entry point: ``enqueue`` without loading click, the rest via it.

Starting Python is most of what one ``queuectl enqueue`` costs, and importing click,
the renderer and every protocol dataclass would more than double it. The plain forms
of ``enqueue`` (a JSON job; or ``--id``, ``--max-retries``, ``--timeout``, ``--delay``,
``--not-idempotent``, ``--json`` and a command) are handled here with the standard
library and msgpack alone, and answer exactly as :mod:`queuectl.cli` does. Anything
else (help, other flags, values it does not read the way click would, no daemon
answering, so an autostart) goes to :func:`queuectl.cli.main` before anything was
sent, so it behaves as before.

The few protocol facts used here (framing, hello, request and reply maps, socket
lookup) are those of :mod:`queuectl.protocol` and :mod:`queuectl.client`;
``tests/unit/test_fastcli.py`` checks that they agree.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 4 * 1024 * 1024
SYSTEM_SOCKET = "/run/queuectl/queuectld.sock"
CONNECT_TIMEOUT_S = 60.0

_INT = re.compile(r"[0-9]{1,4}")
_FLOAT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


class _Fallback(Exception):
    """Not a form handled here: let click do it (nothing has been sent yet)."""


def _socket_path() -> str:
    """What :func:`queuectl.client.resolve_socket` answers without an explicit socket."""
    if os.environ.get("QUEUECTL_SOCKET"):
        return os.environ["QUEUECTL_SOCKET"]
    home = os.environ.get("QUEUECTL_HOME") or os.path.join(os.path.expanduser("~"), ".queuectl")
    user = os.path.join(home, "queuectld.sock")
    if (
        not os.path.exists(user)
        and not os.environ.get("QUEUECTL_HOME")
        and os.path.exists(SYSTEM_SOCKET)
    ):
        return SYSTEM_SOCKET
    return user


def parse_enqueue(args: list[str]) -> tuple[dict[str, Any], bool]:
    """The job spec and ``--json`` of ``queuectl enqueue ARGS``, or :class:`_Fallback`."""
    if not args:
        raise _Fallback
    if len(args) == 1 and args[0].lstrip().startswith("{") and not args[0].startswith("-"):
        import json

        try:
            spec = json.loads(args[0])
        except ValueError:
            raise _Fallback from None  # click words the error
        if not isinstance(spec, dict):
            raise _Fallback
        return spec, False
    spec = {}
    as_json = False
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            words += args[i + 1 :]
            break
        if not arg.startswith("-"):
            words.append(arg)
            i += 1
            continue
        if arg == "--json":
            as_json = True
        elif arg == "--not-idempotent":
            spec["idempotent"] = False
        elif arg in ("--id", "--max-retries", "--timeout", "--delay") and i + 1 < len(args):
            value = args[i + 1]
            if arg == "--id":
                if value.startswith("-") or value == "":
                    raise _Fallback
                spec["id"] = value
            elif arg == "--max-retries":
                if not _INT.fullmatch(value) or int(value) > 1000:
                    raise _Fallback
                spec["max_retries"] = int(value)
            else:
                if not _FLOAT.fullmatch(value):
                    raise _Fallback
                number = float(value)
                if arg == "--timeout" and number < 0.001:
                    raise _Fallback
                spec[arg[2:]] = number
            i += 1
        else:
            raise _Fallback  # help, --file, unknown options, '=' forms: click's business
        i += 1
    if not words:
        raise _Fallback
    after_dashes = "--" in args
    if len(words) == 1 and not after_dashes and words[0].lstrip().startswith("{"):
        raise _Fallback  # JSON mixed with flags: click explains
    if len(words) == 1:
        command = words[0]
    else:
        import shlex

        command = shlex.join(words)
    return {"command": command, **_ordered(spec)}, as_json


def _ordered(spec: dict[str, Any]) -> dict[str, Any]:
    """The keys in the order queuectl.cli adds them (the wire map is the same either way)."""
    keys = ("id", "max_retries", "timeout", "delay", "idempotent")
    return {k: spec[k] for k in keys if k in spec}


class _Conn:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(CONNECT_TIMEOUT_S)
        self.buf = b""
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise _Fallback from None  # no daemon (autostart), permission...: click path

    def send(self, msg: dict[str, Any]) -> None:
        import msgpack

        body: bytes = msgpack.packb(msg, use_bin_type=True)
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def recv(self) -> dict[str, Any] | None:
        import msgpack

        while True:
            if len(self.buf) >= HEADER.size:
                (length,) = HEADER.unpack(self.buf[: HEADER.size])
                if length == 0 or length > MAX_FRAME_BYTES:
                    return None
                end = HEADER.size + length
                if len(self.buf) >= end:
                    body, self.buf = self.buf[HEADER.size : end], self.buf[end:]
                    msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
                    return msg if isinstance(msg, dict) else None
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data


def _error_text(msg: dict[str, Any]) -> str:
    err = msg.get("error")
    return str(err.get("message")) if isinstance(err, dict) else "malformed reply"


def _echo(text: str) -> None:
    if "\x1b" in text:
        import click  # strips terminal escapes when stdout is not a terminal

        click.echo(text)
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _enqueue(args: list[str]) -> int:
    spec, as_json = parse_enqueue(args)
    spec.setdefault("cwd", os.getcwd())
    conn = _Conn(_socket_path())
    try:
        try:
            conn.send({"hello": "queuectl", "version": PROTOCOL_VERSION})
            hello = conn.recv()
        except (ConnectionError, TimeoutError):
            raise _Fallback from None
        if hello is None or hello.get("ok") is not True:
            raise _Fallback  # refused (permissions, version): click reports it
        # From here on the request is sent: never fall back (it could enqueue twice).
        conn.send({"rid": 1, "op": "enqueue", "args": spec})
        while True:
            reply = conn.recv()
            if reply is None:
                print("queuectl: queuectld closed the connection", file=sys.stderr)
                return 1
            if reply.get("rid") == 1 and "event" not in reply:
                break
    finally:
        conn.sock.close()
    if reply.get("ok") is not True:
        print(f"queuectl: {_error_text(reply)}", file=sys.stderr)
        return 1
    job = reply.get("result")
    if not isinstance(job, dict):
        print("queuectl: malformed reply", file=sys.stderr)
        return 1
    if as_json:
        from queuectl.render import to_json

        _echo(to_json(job))
    else:
        _echo(f"enqueued job {job['id']}: {job['command']}")
    return 0


def main() -> None:
    """Console entry point (``queuectl``)."""
    args = sys.argv[1:]
    if args[:1] == ["enqueue"]:
        try:
            sys.exit(_enqueue(args[1:]))
        except _Fallback:
            pass
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)
    from queuectl.cli import main as full

    full()


if __name__ == "__main__":
    main()
