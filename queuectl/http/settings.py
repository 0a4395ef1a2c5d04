"""The gateway's settings: listen address, token and limits, from a TOML file and the environment.

The token is never taken from the command line (where ``ps`` shows it to every user):
``QUEUECTL_HTTP_TOKEN``, ``QUEUECTL_HTTP_TOKEN_FILE`` (systemd's ``LoadCredential=``)
or ``token``/``token_file`` in the file named by ``--config``/``QUEUECTL_HTTP_CONFIG``.
The environment wins over the file; ``--listen`` wins over both.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8080"  # the seed's address
DEFAULT_MAX_BODY = 1024 * 1024
MIN_TOKEN_CHARS = 16


class SettingsError(ValueError):
    """A setting is unusable; the message says which and what to do."""


@dataclass(frozen=True)
class GatewaySettings:
    """What ``queuectl http`` runs with."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    socket: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    # Extra origins (scheme://host:port) whose pages may send mutating requests.
    allowed_origins: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; any other name or address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8080``, ``[::1]:8080`` or ``0.0.0.0:80`` → (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"listen address {text!r} is not HOST:PORT such as {DEFAULT_LISTEN}")
    return host, int(port)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    known = {"listen", "token", "token_file", "socket", "max_body_bytes", "allowed_origins"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    return values


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise SettingsError(f"cannot read the token file {path}: {exc.strerror or exc}") from None


def load(
    listen: str | None = None,
    config: str | None = None,
    socket: str | None = None,
    env: dict[str, str] | None = None,
) -> GatewaySettings:
    """Settings from the file, the environment and the flags; refuses unsafe combinations."""
    env = dict(os.environ) if env is None else env
    path = config or env.get("QUEUECTL_HTTP_CONFIG")
    values = _read_file(path) if path else {}
    token: str | None = values.get("token")
    token_file = env.get("QUEUECTL_HTTP_TOKEN_FILE") or values.get("token_file")
    if env.get("QUEUECTL_HTTP_TOKEN"):
        token = env["QUEUECTL_HTTP_TOKEN"]
    elif env.get("QUEUECTL_HTTP_TOKEN_FILE") or (token_file and not token):
        token = _read_token(str(token_file))
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(
            f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(for example `openssl rand -hex 32`)"
        )
    host, port = parse_listen(
        listen or env.get("QUEUECTL_HTTP_LISTEN") or values.get("listen") or DEFAULT_LISTEN
    )
    max_body = values.get("max_body_bytes", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1024:
        raise SettingsError("max_body_bytes must be a whole number of at least 1024")
    origins = values.get("allowed_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise SettingsError('allowed_origins must be a list of strings such as ["https://ops"]')
    settings = GatewaySettings(
        host=host,
        port=port,
        token=token or None,
        socket=socket or values.get("socket"),
        max_body_bytes=max_body,
        allowed_origins=tuple(o.rstrip("/") for o in origins),
    )
    if not settings.loopback and settings.token is None:
        raise SettingsError(
            f"listening on {host} (not loopback) needs a token: set QUEUECTL_HTTP_TOKEN, "
            "QUEUECTL_HTTP_TOKEN_FILE or token_file in the config file"
        )
    return settings
