"""The ``queuectl`` console entry point: ``enqueue`` without loading click, the rest via it.

Starting Python is most of what one ``queuectl enqueue`` costs, and importing click,
the renderer and every protocol dataclass would more than double it. The plain forms
of ``enqueue`` (a JSON job; or ``--id``, ``--max-retries``, ``--timeout``, ``--delay``,
``--not-idempotent``, ``--json`` and a command) and ``status [--json]`` are handled
here with the standard library and msgpack alone, and answer exactly as
:mod:`queuectl.cli` does. Anything
else (help, other flags, values it does not read the way click would, no daemon
answering, so an autostart; a draining daemon) goes to :func:`queuectl.cli.main`
before anything was sent, so it behaves as before.

The framing, hello, socket lookup and exit statuses are the real ones
(:mod:`queuectl.wire`, :mod:`queuectl.paths`, :mod:`queuectl.errors`), each cheap to
import; ``python -X importtime -c 'import queuectl.fastcli'`` shows what it costs.
"""

from __future__ import annotations

# _socket, not socket: the wrapper module costs milliseconds (enum, selectors) and
# this path needs only connect, sendall and recv on one AF_UNIX stream.
import _socket
import os
import sys

from queuectl import paths, wire
from queuectl.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, QueuectlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONNECT_TIMEOUT_S = 60.0
_DIGITS = frozenset("0123456789")


class _Fallback(Exception):
    """Not a form handled here: let click do it (nothing has been sent yet)."""


def _is_int(text: str, max_digits: int) -> bool:
    """Plain decimal digits only (click refuses what int() would also take: `1_0`, ` 1`)."""
    return 0 < len(text) <= max_digits and set(text) <= _DIGITS


def _is_decimal(text: str) -> bool:
    """``123`` or ``1.5``; no exponent, sign, underscore or space (click's business)."""
    whole, dot, frac = text.partition(".")
    return _is_int(whole, 9) and (not dot or _is_int(frac, 9))


_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


def _quote(word: str) -> str:
    """:func:`shlex.quote` without its regular expression (``re`` costs milliseconds)."""
    if word and set(word) <= _SHELL_SAFE:
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


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
                if not _is_int(value, 4) or int(value) > 1000:
                    raise _Fallback
                spec["max_retries"] = int(value)
            else:
                if not _is_decimal(value):
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
    if not after_dashes and words[0].lstrip().startswith("{"):
        raise _Fallback  # JSON mixed with flags, or several JSON jobs: click's business
    command = words[0] if len(words) == 1 else " ".join(_quote(w) for w in words)
    return {"command": command, **_ordered(spec)}, as_json


def _ordered(spec: dict[str, Any]) -> dict[str, Any]:
    """The keys in the order queuectl.cli adds them (the wire map is the same either way)."""
    keys = ("id", "max_retries", "timeout", "delay", "idempotent")
    return {k: spec[k] for k in keys if k in spec}


class _Conn:
    def __init__(self, path: str) -> None:
        if paths.socket_path_problem(path):
            raise _Fallback  # click words the error
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock.settimeout(CONNECT_TIMEOUT_S)
        self.frames = wire.FrameBuffer()
        self.pending: list[dict[str, Any]] = []
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise _Fallback from None  # no daemon (autostart), permission...: click path

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(wire.pack(msg))

    def recv(self) -> dict[str, Any] | None:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending.extend(self.frames.feed(data))
        return self.pending.pop(0)


def _echo(text: str) -> None:
    if "\x1b" in text:
        import click  # strips terminal escapes when stdout is not a terminal

        click.echo(text)
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _call(op: str, args: dict[str, Any], draining_ok: bool = False) -> dict[str, Any] | int:
    """One request on a new connection: its reply, or an exit status once it failed.

    Raises :class:`_Fallback` until the request is sent (click's path then does it all).
    """
    request = wire.pack({"rid": 1, "op": op, "args": args})  # refuses what cannot go
    conn = _Conn(paths.resolve_socket()[0])
    try:
        try:
            conn.send(wire.hello())
            hello = conn.recv()
        except (ConnectionError, TimeoutError, QueuectlError):
            raise _Fallback from None
        if hello is None or hello.get("ok") is not True:
            raise _Fallback  # refused (permissions, version): click reports it
        if hello.get("draining") and not draining_ok:
            raise _Fallback  # click's path waits for a new daemon (autostart) or says why
        # From here on the request is sent: never fall back (it could enqueue twice).
        conn.sock.sendall(request)
        while True:
            reply = conn.recv()
            if reply is None:
                print("queuectl: queuectld closed the connection", file=sys.stderr)
                return EXIT_REFUSED
            if reply.get("rid") == 1 and "event" not in reply:
                break
    finally:
        conn.sock.close()
    if reply.get("ok") is not True:
        print(f"queuectl: {wire.error_text(reply)[1]}", file=sys.stderr)
        return EXIT_REFUSED
    result = reply.get("result")
    if not isinstance(result, dict):
        print("queuectl: queuectld sent a malformed reply", file=sys.stderr)
        return EXIT_REFUSED
    return result


def _enqueue(args: list[str]) -> int:
    spec, as_json = parse_enqueue(args)
    spec.setdefault("cwd", os.getcwd())
    job = _call("enqueue", spec)
    if isinstance(job, int):
        return job
    from queuectl import render

    _echo(render.to_json(job) if as_json else render.enqueued(job))  # type: ignore[arg-type]
    return EXIT_OK


def _status(args: list[str]) -> int:
    if args not in ([], ["--json"]):
        raise _Fallback
    view = _call("status", {}, draining_ok=True)  # a draining daemon answers status
    if isinstance(view, int):
        return view
    from queuectl import render

    _echo(render.to_json(view) if args else render.status(view))  # type: ignore[arg-type]
    return EXIT_OK


def main() -> None:
    """Console entry point (``queuectl``)."""
    args = sys.argv[1:]
    fast = {"enqueue": _enqueue, "status": _status}.get(args[0] if args else "")
    if fast is not None:
        try:
            sys.exit(fast(args[1:]))
        except _Fallback:
            pass
        except QueuectlError as exc:  # refused before sending (a number over 64 bits...)
            print(f"queuectl: {exc.message}", file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            sys.exit(EXIT_OK)
    from queuectl.cli import main as full

    full()


if __name__ == "__main__":
    main()
