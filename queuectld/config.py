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
import difflib
import grp
import json
import math
import os
import re
import socket
import stat
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuectl import timespec
from queuectl.errors import InvalidRequest
from queuectl.protocol import MAX_CPUS, MAX_PROCS_LIMIT, plain_number
from queuectl.sizes import parse_size
from queuectld.limits import Limits

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
    # Executor processes that carry the workers' jobs; 0: one per CPU (never more than
    # the worker count).
    executors: int = 0
    drain_timeout: float = 30.0
    kill_grace: float = 5.0
    lease_margin: float = 30.0
    log_max_bytes: int = 1024 * 1024
    socket_mode: str = "0600"
    # Group given to the socket (with socket_mode 0660, its members may use the queue).
    socket_group: str = ""
    allowed_uids: list[int] = field(default_factory=list)
    # Members of these groups (names or gids) may use the socket, as allowed_uids may.
    allowed_groups: list[str] = field(default_factory=list)
    # Members see and control every user's jobs (names or gids); others only their own.
    admin_groups: list[str] = field(default_factory=list)
    max_connections: int = 512
    safety_poll: float = 5.0
    # A daemon whose heartbeat is older than this is dead: a survivor returns its jobs
    # to the queue (several daemons on one PostgreSQL store; docs/postgres.md).
    node_timeout: float = 15.0
    # Where each attempt's cgroup goes: "" finds one (systemd's delegated cgroup, or a
    # writable cgroup v2 hierarchy for root), a path names a delegated cgroup v2
    # directory, "off" keeps process groups only (docs/jobs.md).
    cgroup: str = ""
    # Limits for jobs enqueued without their own (--memory, --cpus, --max-procs);
    # "" / 0: none.
    default_memory: str = ""
    default_cpus: float = 0.0
    default_max_procs: int = 0
    # Automatic retention: finished jobs (and their logs) older than this are purged,
    # in small batches; "" or "off" keeps them. In TOML: [retention] completed = "7d".
    retention_completed: str = "7d"
    retention_cancelled: str = "7d"
    retention_dead: str = ""
    retention_every: float = 60.0  # seconds between two retention passes
    # The store: "" keeps the embedded SQLite file (``database``); a postgresql:// URL
    # selects a PostgreSQL database several daemons share, in the schema ``store_schema``.
    # In TOML: [store] url = "postgresql://...", schema = "queuectl".
    store_url: str = ""
    store_schema: str = "queuectl"

    @property
    def uses_postgres(self) -> bool:
        """True when the store is a (shared) PostgreSQL database, not the SQLite file."""
        return self.store_url.startswith(POSTGRES_SCHEMES)

    def store_name(self) -> str:
        """Where the store is, for people and logs: the SQLite path or the URL without
        its password (and the schema), as the store's own ``describe()`` says it."""
        if self.uses_postgres:
            return f"{redact_url(self.store_url)} (schema {self.store_schema})"
        return self.database

    def store_key(self) -> str:
        """What identifies this daemon's queue on this host: jobs carry it (QUEUE_TAG)
        and the cgroup directory derives from it. The SQLite path is already unique;
        daemons sharing a PostgreSQL database add their node and home to it."""
        if self.uses_postgres:
            return f"{self.store_name()} node {self.node_id} home {self.home}"
        return self.database

    def lock_path(self) -> str:
        """The file a daemon holds so that no second daemon runs on the same store (or,
        with PostgreSQL, which several daemons share, in the same home)."""
        if self.uses_postgres:
            return str(Path(self.home) / "queuectld.lock")
        return self.database + ".lock"

    def lock_subject(self) -> str:
        """What the lock file guards, for the refusal: the SQLite file or the home."""
        return f"the home {self.home}" if self.uses_postgres else self.database

    def retention(self) -> dict[str, float]:
        """The retention in force: seconds to keep jobs, per final state that has one."""
        out: dict[str, float] = {}
        for state in RETENTION_STATES:
            text = getattr(self, f"retention_{state}").strip().lower()
            if text and text != "off":
                out[state] = timespec.parse_duration(text)
        return out

    def resolved(self) -> DaemonConfig:
        """A copy with every derived path filled in and ``~`` expanded."""
        home = Path(self.home).expanduser() if self.home else default_home()
        database = self.database
        from_url = sqlite_path(self.store_url)
        if not database and from_url and os.path.isabs(os.path.expanduser(from_url)):
            database = from_url  # a relative one is refused by problems()
        return dataclasses.replace(
            self,
            home=str(home),
            socket=_path(self.socket, home / "queuectld.sock"),
            database=_path(database, home / "queue.db"),
            log_dir=_path(self.log_dir, home / "logs"),
            log_file=_path(self.log_file, None),
            node_id=self.node_id or socket.gethostname(),
        )

    def default_limits(self) -> Limits:
        """The limits of jobs enqueued without their own (``default_memory``...)."""
        return Limits(
            memory=parse_size(self.default_memory) if self.default_memory else None,
            cpus=self.default_cpus or None,
            max_procs=self.default_max_procs or None,
        )

    def problems(self) -> list[tuple[str, str]]:
        """What cannot work, as ``(key, one sentence)`` pairs; empty when all is well."""
        out: list[tuple[str, str]] = []
        if self.log_level not in LOG_LEVELS:
            levels = ", ".join(LOG_LEVELS)
            out.append(("log_level", f"log_level must be one of {levels}, not {self.log_level!r}"))
        if self.log_format not in LOG_FORMATS:
            msg = f"log_format must be 'json' or 'console', not {self.log_format!r}"
            out.append(("log_format", msg))
        if not math.isfinite(self.node_timeout) or self.node_timeout < 1:
            out.append(("node_timeout", "node_timeout must be at least 1 second"))
        for key in ("drain_timeout", "kill_grace", "lease_margin", "safety_poll"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                out.append((key, f"{key} must be a number of seconds, not negative"))
        if self.workers < 0:
            out.append(("workers", "workers must not be negative"))
        for state in RETENTION_STATES:
            key = f"retention_{state}"
            text = getattr(self, key).strip().lower()
            if text and text != "off":
                try:
                    timespec.parse_duration(text)
                except ValueError as exc:
                    out.append((key, f"{key}: {exc}, or 'off'"))
        if not math.isfinite(self.retention_every) or self.retention_every < 1:
            out.append(("retention_every", "retention_every must be at least 1 second"))
        if not 0 <= self.executors <= 256:
            out.append(("executors", "executors must be between 0 (one per CPU) and 256"))
        if self.log_max_bytes < 1024:
            out.append(("log_max_bytes", "log_max_bytes must be at least 1024"))
        if self.max_connections < 1:
            out.append(("max_connections", "max_connections must be at least 1"))
        if self.cgroup not in ("", "off") and not os.path.isabs(self.cgroup):
            msg = f"cgroup must be empty, 'off' or an absolute path, not {self.cgroup!r}"
            out.append(("cgroup", msg))
        if self.default_memory:
            try:
                parse_size(self.default_memory)
            except InvalidRequest as exc:
                out.append(("default_memory", f"default_{exc.message}"))
        if not (self.default_cpus == 0 or 0.01 <= self.default_cpus <= MAX_CPUS):
            msg = f"default_cpus must be 0 (no limit) or between 0.01 and {MAX_CPUS:g}"
            out.append(("default_cpus", msg))
        if not 0 <= self.default_max_procs <= MAX_PROCS_LIMIT:
            msg = f"default_max_procs must be 0 (no limit) or at most {MAX_PROCS_LIMIT}"
            out.append(("default_max_procs", msg))
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            out.append(("socket_mode", "socket_mode must be an octal mode such as '0600'"))
        else:
            if mode & 0o007 or mode & ~0o777:
                msg = "socket_mode must not grant access to others (use 0600 or 0660)"
                out.append(("socket_mode", msg))
        for key, kind in PATH_KEYS.items():
            problem = _path_problem(key, getattr(self, key), kind)
            if problem:
                out.append((key, problem))
        out += _store_problems(self)
        if len(os.fsencode(self.socket)) >= 108:
            out.append(("socket", f"socket path {self.socket!r} is longer than Unix sockets allow"))
        for key in ("allowed_groups", "socket_group"):
            value = getattr(self, key)
            for name in value if isinstance(value, list) else [value] if value else []:
                if group_id(name) is None:
                    out.append((key, f"{key}: there is no group {name!r}"))
        return out

    def warnings(self) -> list[tuple[str, str]]:
        """Values that work but probably do not do what was meant."""
        out: list[tuple[str, str]] = []
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            return out
        granted = {group_id(g) for g in self.allowed_groups}
        group = group_id(self.socket_group) if self.socket_group else None
        if mode & 0o060 and group is not None and group not in granted and not self.allowed_uids:
            out.append(
                (
                    "allowed_groups",
                    f"socket_mode {self.socket_mode} lets group {self.socket_group!r} open the "
                    "socket, but it is not in allowed_groups: its members will be refused",
                )
            )
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming every value that cannot work."""
        problems = self.problems()
        if problems:
            raise ConfigError([Problem("", message) for _, message in problems])

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# PostgreSQL's own limit on identifiers (NAMEDATALEN - 1); unquoted and lower case so
# that the name means the same thing in every statement and in psql.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and messages (``postgresql://u:***@h/db``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def sqlite_path(url: str) -> str | None:
    """The SQLite file a ``store_url`` names (``sqlite:///path``, or a plain path)."""
    if url.startswith("sqlite://"):
        return url.removeprefix("sqlite://") or None
    if url.startswith(("/", "~")):
        return url
    return None


def _store_problems(config: DaemonConfig) -> list[tuple[str, str]]:
    """What is wrong with ``store_url`` / ``store_schema``, one sentence each."""
    out: list[tuple[str, str]] = []
    url = config.store_url
    if url and not config.uses_postgres:
        path = sqlite_path(url)
        if path is None or not os.path.isabs(os.path.expanduser(path)):
            out.append(
                (
                    "store_url",
                    "store_url must be a postgresql:// URL, a sqlite:///absolute/path URL or an "
                    f"absolute path, not {redact_url(url)!r}",
                )
            )
        elif Path(path).expanduser() != Path(config.database):
            out.append(
                (
                    "store_url",
                    f"store_url names the SQLite file {path} but database is {config.database}; "
                    "set only one of them",
                )
            )
    if not _SCHEMA_NAME.fullmatch(config.store_schema) or config.store_schema.startswith("pg_"):
        out.append(
            (
                "store_schema",
                "store_schema must be a plain lower-case identifier (letters, digits and _, "
                f"not starting with a digit or pg_, at most 63), not {config.store_schema!r}",
            )
        )
    return out


LOG_LEVELS = ("debug", "info", "warning", "error")
RETENTION_STATES = ("completed", "cancelled", "dead")
LOG_FORMATS = ("json", "console")


def _path(value: str, default: Path | None) -> str:
    if value:
        return str(Path(value).expanduser())
    return str(default) if default is not None else ""


# Path keys and what each must be if it already exists.
PATH_KEYS: dict[str, str] = {
    "home": "directory",
    "socket": "socket",
    "database": "file",
    "log_dir": "directory",
    "log_file": "file",
}

# Keys a SIGHUP cannot change in a running daemon: they name what it has open.
RESTART_KEYS = frozenset(
    {
        "home",
        "socket",
        "database",
        "log_dir",
        "node_id",
        "socket_mode",
        "socket_group",
        "executors",
        "cgroup",
        "store_url",
        "store_schema",
    }
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
    "executors": int,
    "drain_timeout": float,
    "kill_grace": float,
    "lease_margin": float,
    "log_max_bytes": int,
    "socket_mode": str,
    "socket_group": str,
    "allowed_uids": list[int],
    "allowed_groups": list[str],
    "admin_groups": list[str],
    "max_connections": int,
    "safety_poll": float,
    "node_timeout": float,
    "cgroup": str,
    "default_memory": str,
    "default_cpus": float,
    "default_max_procs": int,
    "retention_completed": str,
    "retention_cancelled": str,
    "retention_dead": str,
    "retention_every": float,
    "store_url": str,
    "store_schema": str,
}


def group_id(name: str) -> int | None:
    """A group name or number as a gid; None for a name no group has."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _path_problem(key: str, value: str, kind: str) -> str | None:
    """Why ``value`` cannot serve as ``key`` (a path of ``kind``), or None."""
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        return f"{key} must be an absolute path (or start with ~), not {value!r}"
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"{key}: {parent} is not a directory"
                break
        return None  # created at start
    except OSError as exc:
        return f"{key}: cannot use {value}: {exc.strerror}"
    if kind == "directory" and not stat.S_ISDIR(st.st_mode):
        return f"{key}: {value} exists and is not a directory"
    if kind == "file" and stat.S_ISDIR(st.st_mode):
        return f"{key}: {value} is a directory"
    if kind == "socket" and not stat.S_ISSOCK(st.st_mode):
        return f"{key}: {value} exists and is not a socket"
    return None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration and where it was set (``file:line``...)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ConfigError(InvalidRequest):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _kind_name(kind: Any) -> str:
    if kind == list[str]:
        return "a list of names or numbers"
    if kind == list[int]:
        return "a list of integers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    for kind, name in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a number"),
        (list, "a list"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind in (str, int, float) else name
    return type(value).__name__


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS.update({"0": False, "false": False, "no": False, "off": False})


def _coerce(key: str, value: Any, kind: Any, from_text: bool) -> Any:
    """``value`` as ``kind``. Text (environment, flags) is parsed; TOML values must fit.

    Raises ValueError with one sentence naming the key and what was expected.
    """
    given = repr(value) if from_text and isinstance(value, str) else _type_name(value)
    wrong = ValueError(f"{key} must be {_kind_name(kind)}, not {given}")
    if from_text and isinstance(value, str) and kind is not str:
        parts = [p for p in value.replace(",", " ").split() if p]
        try:
            if kind is int:
                return int(value.strip())
            if kind is float:
                return float(value.strip())
            if kind is bool:
                return _BOOLS[value.strip().lower()]
            if kind == list[int]:
                return [int(p) for p in parts]
            if kind == list[str]:
                return parts
        except (ValueError, KeyError):
            raise wrong from None
    if isinstance(value, bool):
        if kind is bool:
            return value
        raise wrong
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if isinstance(value, list) and kind in (list[int], list[str]):
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if kind == list[int] and ints:
            return list(value)
        if kind == list[str] and all(
            isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value
        ):
            return [str(v) for v in value]
    raise wrong


def _line_of(text: str, key: str) -> int | None:
    """The line that sets top-level ``key`` (``key =``, ``"key" =``, ``[key]``, ``key.x =``)."""
    k = re.escape(key)
    pattern = rf"""^[ \t]*\[?[ \t]*(?:{k}|"{k}"|'{k}')[ \t]*[=.\]]"""
    match = re.search(pattern, text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _toml_problem(path: str, exc: tomllib.TOMLDecodeError, text: str) -> Problem:
    """A TOML syntax error as ``path:line: what (column n)``."""
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
    if match:
        what = message[: match.start()] + f" (column {match.group(2)})"
        return Problem(f"{path}:{match.group(1)}", what)
    match = re.search(r"\s*\(at end of document\)", message)
    if match:
        last = len(text.rstrip("\n").split("\n"))
        return Problem(f"{path}:{last}", message[: match.start()] + " (at the end of the file)")
    return Problem(path, message)


@dataclass
class Explained:
    """The effective configuration, where each value came from, and what looks wrong."""

    config: DaemonConfig
    origins: dict[str, str]
    warnings: list[Problem]
    path: str


def explain_config(path: str | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> Explained:
    """Build the effective configuration: defaults < file < environment < flags.

    Every problem found is reported at once (:class:`ConfigError`), each with where
    the value was set: ``file:line``, the environment variable, or the flag.
    """
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    warnings: list[Problem] = []

    def take(key: str, value: Any, where: str, from_text: bool) -> None:
        if key not in _FIELD_TYPES:
            close = difflib.get_close_matches(key, list(_FIELD_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(where, f"unknown key {key!r}{hint}"))
            return
        try:
            value = _coerce(key, value, _FIELD_TYPES[key], from_text)
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
            return
        if from_text and key in PATH_KEYS and value:
            # Relative to where the daemon was started, not to where it later runs.
            value = os.path.abspath(os.path.expanduser(value))
        values[key] = value
        origins[key] = where

    config_path = path or env.get("QUEUECTLD_CONFIG") or ""
    if config_path:
        try:
            text = Path(config_path).read_text(encoding="utf-8")
        except FileNotFoundError:
            missing = Problem(config_path, "the configuration file does not exist")
            raise ConfigError([missing]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([Problem(config_path, f"cannot read it: {exc}")]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([_toml_problem(config_path, exc, text)]) from None
        # [retention] completed = "7d" is retention_completed = "7d"; [store] likewise.
        for table in ("retention", "store"):
            section = data.pop(table, None)
            if isinstance(section, dict):
                data.update({f"{table}_{k}": v for k, v in section.items()})
            elif section is not None:
                data[table] = section  # reported as an unknown key below
        for key, value in data.items():
            line = _line_of(text, key)
            if line is None and key.startswith(("retention_", "store_")):
                line = _line_of(text, key.split("_", 1)[0])  # the [table] it came from
            take(key, value, f"{config_path}:{line}" if line else config_path, False)
    if env.get("QUEUECTL_HOME"):
        take("home", env["QUEUECTL_HOME"], "environment QUEUECTL_HOME", True)
    if env.get("QUEUECTL_SOCKET"):
        take("socket", env["QUEUECTL_SOCKET"], "environment QUEUECTL_SOCKET", True)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == "QUEUECTLD_CONFIG":
            continue
        # A variable naming no key is refused like an unknown key in the file: a typo
        # (QUEUECTLD_WORKER) must not leave the daemon silently on its defaults.
        take(name[len(ENV_PREFIX) :].lower(), env[name], f"environment {name}", True)
    for key, value in flags.items():
        if value is not None:
            take(key, value, "--" + key.replace("_", "-"), True)
    # Values of the wrong type were left out: check the rest too, to report everything.
    config = DaemonConfig(**values).resolved()
    problems += [Problem(origins.get(k, ""), message) for k, message in config.problems()]
    if problems:
        raise ConfigError(sorted(problems, key=_problem_order))
    warnings += [Problem(origins.get(k, ""), message) for k, message in config.warnings()]
    return Explained(config, origins, warnings, config_path)


def _problem_order(problem: Problem) -> tuple[str, int]:
    where, _, line = problem.where.rpartition(":")
    return (where, int(line)) if line.isdigit() else (problem.where, 0)


def load_config(
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
) -> DaemonConfig:
    """The effective configuration (see :func:`explain_config`); ConfigError if unusable."""
    return explain_config(path, env, flags).config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def render_toml(explained: Explained) -> str:
    """The effective configuration as a TOML file (``--print-config``), sources as comments."""
    config = explained.config
    lines = [
        "# queuectld: effective configuration (flags > environment > file > defaults)",
        f"# configuration file: {explained.path or '(none)'}",
    ]
    derived = {"socket", "database", "log_dir"}
    for f in dataclasses.fields(DaemonConfig):
        value = getattr(config, f.name)
        origin = explained.origins.get(f.name)
        if origin is None:
            if f.name in derived:
                origin = "derived from home"
            elif f.name == "node_id":
                origin = "derived from the host name"
            else:
                origin = "default"
        if f.name == "store_url":
            value = redact_url(value)  # printed configurations end up in tickets
        lines.append(f"{f.name} = {_toml_value(value)}  # {origin}")
    return "\n".join(lines) + "\n"


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
        kind = "an integer" if self.parse is int else "a number"
        try:
            if "_" in raw:  # Python reads 1_0 as 10; people mean something else
                raise ValueError(raw)
            value = self.parse(raw)
        except ValueError:
            raise InvalidRequest(f"{self.key} must be {kind}, not {raw!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"{self.key} must be a finite number")
        if not self.low <= value <= self.high:
            low, high = plain_number(self.low), plain_number(self.high)
            raise InvalidRequest(
                f"{self.key} must be between {low} and {high}, not {plain_number(value)}"
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
            "jitter", 0.0, float, 0.0, 1.0, "each retry delay varies by up to this fraction"
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


@dataclass(frozen=True)
class QueueSettings:
    """The queue settings, typed: what the dispatcher and the retry policy read."""

    max_retries: int
    backoff_base: float
    backoff_max: float
    default_timeout: float
    max_interruptions: int
    jitter: float = 0.0

    @classmethod
    def from_values(cls, values: Mapping[str, float | int]) -> QueueSettings:
        """From the ``config`` keys (``max-retries``...) and their parsed values."""
        return cls(
            max_retries=int(values["max-retries"]),
            backoff_base=float(values["backoff-base"]),
            backoff_max=float(values["backoff-max"]),
            default_timeout=float(values["default-timeout"]),
            max_interruptions=int(values["max-interruptions"]),
            jitter=float(values["jitter"]),
        )
