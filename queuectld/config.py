"""Daemon settings (file, environment, flags) and queue settings (changed at run time).

Two kinds of configuration live here:

* :class:`DaemonConfig` — how the daemon runs: paths, limits, logging. Precedence is
  flags > environment (``QUEUECTLD_<KEY>``, plus ``QUEUECTL_HOME``/``QUEUECTL_SOCKET``
  shared with the client) > TOML file > defaults.
* :data:`QUEUE_SETTINGS` — how jobs are treated: retries, backoff, timeout. Changed
  with ``queuectl config set``, stored in the queue database, applied at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuectl.errors import InvalidRequest

ENV_PREFIX = "QUEUECTLD_"


def default_home() -> Path:
    """The per-user state directory: ``$QUEUECTL_HOME`` or ``~/.queuectl``."""
    return Path(os.environ.get("QUEUECTL_HOME") or Path.home() / ".queuectl")


@dataclass
class DaemonConfig:
    """Everything the daemon needs to start; empty paths are derived from ``home``."""

    home: str = ""
    socket: str = ""
    database: str = ""
    log_dir: str = ""
    log_file: str = ""
    log_level: str = "info"
    log_format: str = "json"
    node_id: str = ""
    workers: int = 0
    drain_timeout: float = 30.0
    kill_grace: float = 5.0
    lease_margin: float = 30.0
    log_max_bytes: int = 1024 * 1024
    socket_mode: str = "0600"
    # Group given to the socket (with socket_mode 0660, its members may use the queue).
    socket_group: str = ""
    allowed_uids: list[int] = field(default_factory=list)
    # Members see and control every user's jobs (names or gids); others only their own.
    admin_groups: list[str] = field(default_factory=list)
    max_connections: int = 512
    safety_poll: float = 5.0

    def resolved(self) -> DaemonConfig:
        """A copy with every derived path filled in and ``~`` expanded."""
        home = Path(self.home).expanduser() if self.home else default_home()
        return dataclasses.replace(
            self,
            home=str(home),
            socket=_path(self.socket, home / "queuectld.sock"),
            database=_path(self.database, home / "queue.db"),
            log_dir=_path(self.log_dir, home / "logs"),
            log_file=_path(self.log_file, None),
            node_id=self.node_id or socket.gethostname(),
        )

    def validate(self) -> None:
        """Refuse values that cannot work, with one sentence naming the key."""
        if self.log_level not in LOG_LEVELS:
            raise InvalidRequest(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in ("json", "console"):
            raise InvalidRequest("log_format must be 'json' or 'console'")
        for key in ("drain_timeout", "kill_grace", "lease_margin", "safety_poll"):
            if getattr(self, key) < 0:
                raise InvalidRequest(f"{key} must not be negative")
        if self.workers < 0:
            raise InvalidRequest("workers must not be negative")
        if self.log_max_bytes < 1024:
            raise InvalidRequest("log_max_bytes must be at least 1024")
        if self.max_connections < 1:
            raise InvalidRequest("max_connections must be at least 1")
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            raise InvalidRequest("socket_mode must be an octal mode such as '0600'") from None
        if mode & 0o007:
            raise InvalidRequest("socket_mode must not grant access to others (use 0600 or 0660)")
        if len(os.fsencode(self.socket)) >= 108:
            raise InvalidRequest(f"socket path {self.socket!r} is longer than Unix sockets allow")

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _path(value: str, default: Path | None) -> str:
    if value:
        return str(Path(value).expanduser())
    return str(default) if default is not None else ""


def _coerce(key: str, value: Any, kind: Any, source: str) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind == list[str]:
        if isinstance(value, str):
            return [p for p in value.replace(",", " ").split() if p]
        if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
            return [str(v) for v in value]
    elif kind == list[int]:
        if isinstance(value, str):
            parts = [p for p in value.replace(",", " ").split() if p]
            if all(p.isdigit() for p in parts):
                return [int(p) for p in parts]
        elif isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return value
    raise InvalidRequest(f"{source}: {key} has the wrong type; expected {_kind_name(kind)}")


def _kind_name(kind: Any) -> str:
    if kind == list[str]:
        return "a list of names"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, "a list of integers"
    )


_FIELD_TYPES: dict[str, Any] = {
    "home": str,
    "socket": str,
    "database": str,
    "log_dir": str,
    "log_file": str,
    "log_level": str,
    "log_format": str,
    "node_id": str,
    "workers": int,
    "drain_timeout": float,
    "kill_grace": float,
    "lease_margin": float,
    "log_max_bytes": int,
    "socket_mode": str,
    "socket_group": str,
    "allowed_uids": list[int],
    "admin_groups": list[str],
    "max_connections": int,
    "safety_poll": float,
}


def _apply(values: dict[str, Any], raw: Mapping[str, Any], source: str) -> None:
    for key, value in raw.items():
        if key not in _FIELD_TYPES:
            raise InvalidRequest(f"{source}: unknown key {key!r}")
        values[key] = _coerce(key, value, _FIELD_TYPES[key], source)


def load_config(
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
) -> DaemonConfig:
    """Build the effective configuration: defaults < file < environment < flags."""
    values: dict[str, Any] = {}
    config_path = path or env.get("QUEUECTLD_CONFIG") or ""
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidRequest(f"config file {config_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"config file {config_path}: {exc}") from None
        _apply(values, data, f"config file {config_path}")
    from_env: dict[str, Any] = {}
    if env.get("QUEUECTL_HOME"):
        from_env["home"] = env["QUEUECTL_HOME"]
    if env.get("QUEUECTL_SOCKET"):
        from_env["socket"] = env["QUEUECTL_SOCKET"]
    for key in _FIELD_TYPES:
        name = ENV_PREFIX + key.upper()
        if name in env:
            from_env[key] = env[name]
    _apply(values, from_env, "environment")
    _apply(values, {k: v for k, v in flags.items() if v is not None}, "command line")
    config = DaemonConfig(**values).resolved()
    config.validate()
    return config


# ---------------------------------------------------------------------------
# Queue settings: `queuectl config get/set/list`


@dataclass(frozen=True)
class QueueSetting:
    """One run-time setting: its type, default, allowed range and what it is for."""

    key: str
    default: float | int
    parse: Callable[[str], float | int]
    low: float
    high: float
    help: str

    def check(self, raw: str) -> float | int:
        try:
            value = self.parse(raw)
        except ValueError:
            kind = "an integer" if self.parse is int else "a number"
            raise InvalidRequest(f"{self.key} must be {kind}, not {raw!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"{self.key} must be a finite number")
        if not self.low <= value <= self.high:
            raise InvalidRequest(
                f"{self.key} must be between {self.low:g} and {self.high:g}, not {value:g}"
            )
        return value


QUEUE_SETTINGS: dict[str, QueueSetting] = {
    s.key: s
    for s in (
        QueueSetting(
            "max-retries", 3, int, 0, 1000, "retries after the first failure before the DLQ"
        ),
        QueueSetting(
            "backoff-base", 2.0, float, 1.0, 60.0, "a retry waits backoff-base ** attempts seconds"
        ),
        QueueSetting(
            "backoff-max", 3600.0, float, 0.0, 7 * 86400.0, "the longest wait between retries"
        ),
        QueueSetting(
            "default-timeout", 10.0, float, 0.001, 7 * 86400.0, "seconds a job may run by default"
        ),
        QueueSetting(
            "max-interruptions",
            5,
            int,
            0,
            1000,
            "crashes/drains a job may suffer before it is dead",
        ),
    )
}


def queue_settings(stored: Mapping[str, str]) -> dict[str, float | int]:
    """The effective queue settings: stored values over defaults (bad stored values ignored)."""
    out: dict[str, float | int] = {}
    for key, setting in QUEUE_SETTINGS.items():
        out[key] = setting.default
        if key in stored:
            try:
                out[key] = setting.check(stored[key])
            except InvalidRequest:
                pass
    return out


def setting_for(key: str) -> QueueSetting:
    """Look a setting up by name; ``max_retries`` and ``max-retries`` both work."""
    setting = QUEUE_SETTINGS.get(key.replace("_", "-"))
    if setting is None:
        known = ", ".join(QUEUE_SETTINGS)
        raise InvalidRequest(f"unknown setting {key!r}; settings are: {known}")
    return setting
