"""The wire protocol: everything that crosses a queuectl socket or pipe is defined here.

Framing (in :mod:`queuectl.wire`, re-exported here): a 4-byte big-endian length,
then one msgpack map of at most ``MAX_FRAME_BYTES``. On connect the client sends a
:class:`Hello` and the daemon answers a :class:`HelloReply` (or an error frame, then
closes). After that every request is a :class:`Request` frame answered by one
:class:`Reply` with the same ``rid``; a ``watch`` request is answered by
:class:`EventFrame` s until the client hangs up.

Request arguments are validated here, once, for every transport: each request type
is a frozen dataclass whose :func:`parse_args` refuses unknown fields, wrong types
and values over the limits with an :class:`~queuectl.errors.InvalidRequest`.

The daemon and its executor processes talk over pipes with the same framing; their
messages are private to the daemon (``queuectld/execproto.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NotRequired, TypedDict, TypeVar

from queuectl import wire
from queuectl.errors import InvalidRequest, ProtocolError
from queuectl.sizes import parse_size

# The wire format lives in queuectl.wire (cheap to import: the fast enqueue path uses
# it alone); re-exported here so that `from queuectl.protocol import pack` keeps working.
PROTOCOL_VERSION = wire.PROTOCOL_VERSION
MAX_FRAME_BYTES = wire.MAX_FRAME_BYTES
HEADER = wire.HEADER
FrameBuffer = wire.FrameBuffer
pack = wire.pack
unpack = wire.unpack
request_id = wire.request_id
frame_length = wire.frame_length

MAX_COMMAND_BYTES = 64 * 1024
MAX_ID_CHARS = 128
# Ids name log files (job_<id>.txt), so they are restricted to a safe alphabet.
JOB_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MAX_BATCH_JOBS = 10_000
MAX_LIST_LIMIT = 100_000
MAX_WORKERS = 1024
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_RETRIES_LIMIT = 1000
# Priorities: higher runs first; equal priorities run in arrival order.
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
# Queue names are shown in tables and used as keys: a short, safe alphabet.
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
DEFAULT_QUEUE = "default"
MAX_UNIQUE_KEY_CHARS = 256
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 64 * 1024
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_IDS_PER_REQUEST = 10_000
MIN_MEMORY_BYTES = 1 << 20
MAX_CPUS = 1024.0
MAX_PROCS_LIMIT = 1 << 22
MAX_PARENTS = 100


class JobState(enum.StrEnum):
    """Where a job is in its life.

    ``waiting``: not due yet (``--delay``/``--run-at``); ``blocked``: waiting for its
    parents (``--after``); ``failed``: waiting for a retry; ``dead``: the DLQ;
    ``cancelled``: stopped by a user (``cancel``, ``kill``) or by a parent that failed.
    """

    PENDING = "pending"
    WAITING = "waiting"
    BLOCKED = "blocked"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


# States a job does not leave by itself: `wait` returns once every job is in one.
FINAL_STATES = frozenset({JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED})


class Op(enum.StrEnum):
    """Every request type the daemon answers."""

    PING = "ping"
    ENQUEUE = "enqueue"
    ENQUEUE_BATCH = "enqueue_batch"
    GET_JOB = "get_job"
    LIST_JOBS = "list_jobs"
    STATUS = "status"
    METRICS = "metrics"
    WORKERS_SET = "workers_set"
    WORKERS_STOP = "workers_stop"
    DLQ_RETRY = "dlq_retry"
    CANCEL = "cancel"
    KILL = "kill"
    RETRY = "retry"
    PURGE = "purge"
    VACUUM = "vacuum"
    SCHEDULE_ADD = "schedule_add"
    SCHEDULE_LIST = "schedule_list"
    SCHEDULE_GET = "schedule_get"
    SCHEDULE_SET = "schedule_set"
    SCHEDULE_REMOVE = "schedule_remove"
    SCHEDULE_RUN = "schedule_run"
    QUEUE_LIST = "queue_list"
    QUEUE_SET = "queue_set"
    LOGS = "logs"
    CONFIG_GET = "config_get"
    CONFIG_SET = "config_set"
    CONFIG_LIST = "config_list"
    WATCH = "watch"
    WAIT = "wait"
    FOLLOW_LOGS = "follow_logs"
    NODES = "nodes"
    SHUTDOWN = "shutdown"


# ---------------------------------------------------------------------------
# Envelopes


@dataclass(frozen=True)
class Hello:
    """First frame from a client."""

    version: int = PROTOCOL_VERSION
    client: str = "queuectl"

    def to_wire(self) -> dict[str, Any]:
        return wire.hello(self.client, self.version)

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Hello:
        client, version = msg.get("hello"), msg.get("version")
        if not isinstance(client, str) or not isinstance(version, int) or isinstance(version, bool):
            raise ProtocolError("expected a hello frame with a client name and a protocol version")
        return cls(version=version, client=client)


@dataclass(frozen=True)
class HelloReply:
    """The daemon's answer to :class:`Hello`."""

    version: int
    server: str
    # True while the daemon drains: it answers status and ping, refuses new work.
    draining: bool = False
    # The daemon's process id, so a client can wait for a draining daemon to exit.
    pid: int | None = None

    def to_wire(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.draining:
            extra["draining"] = True
        if self.pid is not None:
            extra["pid"] = self.pid
        return wire.hello_reply(self.server, self.version, **extra)


@dataclass(frozen=True)
class Request:
    """One request: ``rid`` pairs it with its reply."""

    rid: int
    op: Op
    args: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"rid": self.rid, "op": self.op.value, "args": self.args}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Request:
        rid, op, args = msg.get("rid"), msg.get("op"), msg.get("args", {})
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise ProtocolError("a request needs an integer rid")
        if not isinstance(args, dict):
            raise InvalidRequest("request args must be a map")
        try:
            return cls(rid=rid, op=Op(str(op)), args=args)
        except ValueError:
            shown = repr(op) if len(repr(op)) <= 40 else repr(op)[:40] + "..."
            raise InvalidRequest(f"unknown operation {shown}") from None


@dataclass(frozen=True)
class ErrorBody:
    """The error half of a failed reply."""

    code: str
    message: str


@dataclass(frozen=True)
class Reply:
    """The answer to one :class:`Request`."""

    rid: int
    result: Any = None
    error: ErrorBody | None = None

    def to_wire(self) -> dict[str, Any]:
        if self.error is not None:
            err = {"code": self.error.code, "message": self.error.message}
            return {"rid": self.rid, "ok": False, "error": err}
        return {"rid": self.rid, "ok": True, "result": self.result}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> Reply:
        rid = msg.get("rid")
        if not isinstance(rid, int):
            raise ProtocolError("a reply needs an integer rid")
        if msg.get("ok") is True:
            return cls(rid=rid, result=msg.get("result"))
        err = msg.get("error")
        if not isinstance(err, dict):
            raise ProtocolError("a failed reply needs an error map")
        return cls(rid=rid, error=ErrorBody(str(err.get("code")), str(err.get("message"))))


@dataclass(frozen=True)
class EventFrame:
    """One event of a ``watch`` stream."""

    rid: int
    event: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"rid": self.rid, "event": self.event}


# ---------------------------------------------------------------------------
# Request arguments: one frozen dataclass per request type.


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except InvalidRequest:
                continue
        raise InvalidRequest(f"field {name!r} has the wrong type ({type(value).__name__})")
    if origin is list:
        if not isinstance(value, list):
            raise InvalidRequest(f"field {name!r} must be a list")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(f"{name}[{i}]", item, item_hint) for i, item in enumerate(value)]
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"field {name!r} must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"field {name!r} must be an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise InvalidRequest(f"field {name!r} must be a string")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"field {name!r} must be true or false")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise InvalidRequest(f"field {name!r} must be a map")
        return value
    raise TypeError(f"unsupported hint {hint!r}")  # a bug in this module, not bad input


T = TypeVar("T")


_SCHEMAS: dict[type[Any], tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]] = {}


def _schema(cls: type[Any]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A request class's type hints and fields, worked out once (a batch parses thousands)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        schema = _SCHEMAS[cls] = (typing.get_type_hints(cls), fields)
    return schema


def parse_args(cls: type[T], args: Mapping[str, Any], what: str | None = None) -> T:
    """Build the dataclass ``cls`` from a wire map, refusing unknown/missing/mistyped fields."""
    label = what or getattr(cls, "label", cls.__name__)
    hints, fields = _schema(cls)
    if not all(isinstance(key, str) for key in args):
        raise InvalidRequest(f"field names in {label} must be strings")
    unknown = sorted(set(args) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise InvalidRequest(f"unknown field {unknown[0]!r} in {label}; known fields: {known}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in args:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidRequest(f"{label} is missing the required field {name!r}")
            continue
        values[name] = _check_type(name, args[name], hints[name])
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def validate_job_id(job_id: str) -> None:
    """Refuse ids that are empty, too long, or unusable as a file name."""
    if not job_id:
        raise InvalidRequest("job id must not be empty")
    if len(job_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"job id is {len(job_id)} characters; the limit is {MAX_ID_CHARS}")
    if not JOB_ID_RE.fullmatch(job_id):
        raise InvalidRequest(
            f"job id {job_id!r} may only use letters, digits, '_', '.' and '-', "
            "and must not start with '.' or '-'"
        )


def plain_number(value: float) -> str:
    """``4611686018427387904``, ``0.001``, ``2.5``: never scientific notation."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be between {plain_number(low)} and {plain_number(high)}, "
            f"not {plain_number(value)}"
        )


def validate_queue_name(name: str) -> None:
    """Refuse queue names that are empty, too long or outside the safe alphabet."""
    if not QUEUE_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"queue name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )


def validate_env(env: Mapping[str, Any]) -> None:
    """Refuse job variables with bad names or values, or that would hide queuectl's own."""
    if len(env) > MAX_ENV_VARS:
        raise InvalidRequest(f"a job takes at most {MAX_ENV_VARS} environment variables")
    size = 0
    for name, value in env.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"environment variable {name!r} must have a string value")
        if not ENV_NAME_RE.fullmatch(name):
            raise InvalidRequest(
                f"environment variable name {name!r} must be letters, digits and '_', "
                "not starting with a digit"
            )
        if name.startswith("QUEUECTL_"):
            raise InvalidRequest(
                f"environment variable {name!r} is reserved: queuectl sets QUEUECTL_* itself"
            )
        if "\x00" in value:
            raise InvalidRequest(f"environment variable {name!r} must not contain NUL bytes")
        size += len(name) + len(value.encode("utf-8", "surrogatepass")) + 2
    if size > MAX_ENV_BYTES:
        raise InvalidRequest(f"the job's environment is {size} bytes; the limit is {MAX_ENV_BYTES}")


@dataclass(frozen=True)
class EnqueueArgs:
    """A job to add: ``command`` runs as ``sh -c COMMAND``; unset fields use the queue settings."""

    label: ClassVar[str] = "job"
    command: str
    id: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    # When it may start: ``delay`` seconds from now, or at ``run_at`` (Unix time); not both.
    delay: float | None = None
    run_at: float | None = None
    cwd: str | None = None
    # False: a run cut short by a crash or a drain ends the job (dead), never re-runs it.
    idempotent: bool = True
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    # While a job with this key is not final, enqueuing the key again returns that job.
    unique_key: str | None = None
    env: dict | None = None  # type: ignore[type-arg]
    backoff_base: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None
    # Limits (docs/jobs.md): memory as a size ("512M"), CPUs (1.5), processes.
    memory: str | None = None
    cpus: float | None = None
    max_procs: int | None = None
    # Parents: it runs once all ``after`` jobs completed and all ``after_any`` jobs are
    # final; a parent in ``after`` that ends dead or cancelled cancels it.
    after: list[str] | None = None
    after_any: list[str] | None = None

    def validate(self) -> None:
        if self.cwd is not None and (not self.cwd.startswith("/") or "\x00" in self.cwd):
            raise InvalidRequest("cwd must be an absolute directory path")
        if not self.command.strip():
            raise InvalidRequest("job command must not be empty")
        size = len(self.command.encode("utf-8", "surrogatepass"))
        if size > MAX_COMMAND_BYTES:
            raise InvalidRequest(f"job command is {size} bytes; the limit is {MAX_COMMAND_BYTES}")
        if "\x00" in self.command:
            raise InvalidRequest("job command must not contain NUL bytes")
        try:
            self.command.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("job command must be valid UTF-8") from None
        if self.id is not None:
            validate_job_id(self.id)
        _check_range("max_retries", self.max_retries, 0, MAX_RETRIES_LIMIT)
        _check_range("timeout", self.timeout, 0.001, MAX_TIMEOUT_S)
        _check_range("delay", self.delay, 0, MAX_TIMEOUT_S * 52)
        if self.delay is not None and self.run_at is not None:
            raise InvalidRequest("give either a delay or a run-at time, not both")
        _check_range("run_at", self.run_at, 0, 2**40)
        _check_range("priority", self.priority, MIN_PRIORITY, MAX_PRIORITY)
        validate_queue_name(self.queue)
        if self.unique_key is not None and not 1 <= len(self.unique_key) <= MAX_UNIQUE_KEY_CHARS:
            raise InvalidRequest(f"unique key must be 1 to {MAX_UNIQUE_KEY_CHARS} characters")
        if self.env is not None:
            validate_env(self.env)
        _check_range("backoff_base", self.backoff_base, 1, 60)
        _check_range("backoff_max", self.backoff_max, 0, MAX_TIMEOUT_S)
        _check_range("jitter", self.jitter, 0, 1)
        if self.memory is not None and parse_size(self.memory) < MIN_MEMORY_BYTES:
            raise InvalidRequest("memory must be at least 1M (a shell needs more than that)")
        _check_range("cpus", self.cpus, 0.01, MAX_CPUS)
        _check_range("max_procs", self.max_procs, 1, MAX_PROCS_LIMIT)

    def memory_bytes(self) -> int | None:
        """``memory`` in bytes (None: no limit)."""
        return None if self.memory is None else parse_size(self.memory)
        parents = [*(self.after or []), *(self.after_any or [])]
        if len(parents) > MAX_PARENTS:
            raise InvalidRequest(f"a job may wait on at most {MAX_PARENTS} parents")
        for parent in parents:
            validate_job_id(parent)
        if len(set(parents)) < len(parents):
            raise InvalidRequest("name each parent once, in after or in after_any")


@dataclass(frozen=True)
class EnqueueBatchArgs:
    """Many jobs in one request, committed together: all are stored or none is."""

    label: ClassVar[str] = "enqueue_batch"
    jobs: list[dict]  # type: ignore[type-arg]

    def validate(self) -> None:
        if not self.jobs:
            raise InvalidRequest("enqueue_batch needs at least one job")
        if len(self.jobs) > MAX_BATCH_JOBS:
            raise InvalidRequest(f"enqueue_batch takes at most {MAX_BATCH_JOBS} jobs a request")

    def parsed(self) -> list[EnqueueArgs]:
        out = []
        for i, job in enumerate(self.jobs):
            try:
                out.append(parse_args(EnqueueArgs, job))
            except InvalidRequest as exc:
                raise InvalidRequest(f"job {i + 1} of the batch: {exc.message}") from None
        return out


@dataclass(frozen=True)
class JobIdArgs:
    """A request about one job."""

    label: ClassVar[str] = "request"
    id: str

    def validate(self) -> None:
        validate_job_id(self.id)


@dataclass(frozen=True)
class JobIdsArgs:
    """A request about several jobs (cancel, retry): all are changed or none is."""

    label: ClassVar[str] = "request"
    ids: list[str]

    def validate(self) -> None:
        if not self.ids:
            raise InvalidRequest("name at least one job id")
        if len(self.ids) > MAX_IDS_PER_REQUEST:
            raise InvalidRequest(f"name at most {MAX_IDS_PER_REQUEST} jobs a request")
        for job_id in self.ids:
            validate_job_id(job_id)


@dataclass(frozen=True)
class KillArgs:
    """Signal running jobs' process groups; SIGKILL follows after the grace period."""

    label: ClassVar[str] = "kill request"
    ids: list[str]
    signal: str = "TERM"
    # False: the job ends cancelled; True: the attempt counts as a failure (retry policy).
    retry: bool = False

    def validate(self) -> None:
        JobIdsArgs(self.ids).validate()
        signal_number(self.signal)


def signal_number(name: str) -> int:
    """``TERM``, ``SIGTERM`` or ``15`` as a signal number; refuse anything else."""
    import signal as _signal

    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {int(s) for s in _signal.valid_signals()} and 0 < number < 65:
            return number
    else:
        text = text if text.startswith("SIG") else "SIG" + text
        member = getattr(_signal.Signals, text, None)
        if isinstance(member, _signal.Signals):
            return int(member)
    raise InvalidRequest(f"unknown signal {name!r}; use a name such as TERM, INT, KILL or HUP")


class SortKey(enum.StrEnum):
    """Orders ``list`` can show jobs in."""

    OLDEST = "oldest"  # enqueue order (the default)
    NEWEST = "newest"
    PRIORITY = "priority"  # the order the dispatcher takes them in
    RUN_AT = "run_at"


@dataclass(frozen=True)
class ListArgs:
    """List jobs, optionally of one state and one queue, created since a time."""

    label: ClassVar[str] = "list request"
    state: str | None = None
    limit: int = 100
    offset: int = 0
    queue: str | None = None
    since: float | None = None  # Unix time: only jobs created at or after it
    sort: str = SortKey.OLDEST.value

    def validate(self) -> None:
        if self.state is not None and self.state not in {s.value for s in JobState}:
            states = ", ".join(s.value for s in JobState)
            raise InvalidRequest(f"unknown state {self.state!r}; states are: {states}")
        _check_range("limit", self.limit, 1, MAX_LIST_LIMIT)
        _check_range("offset", self.offset, 0, 2**62)
        if self.queue is not None:
            validate_queue_name(self.queue)
        if self.sort not in {k.value for k in SortKey}:
            keys = ", ".join(k.value for k in SortKey)
            raise InvalidRequest(f"unknown sort {self.sort!r}; sorts are: {keys}")


RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class QueueSetArgs:
    """Change one queue's settings; fields left out keep their value.

    ``concurrency`` 0 and ``rate`` ``""`` remove the limit; ``rate`` is ``N/s``,
    ``N/m`` or ``N/h``.
    """

    label: ClassVar[str] = "queue request"
    name: str
    concurrency: int | None = None
    rate: str | None = None
    paused: bool | None = None

    def validate(self) -> None:
        validate_queue_name(self.name)
        _check_range("concurrency", self.concurrency, 0, MAX_WORKERS * 1000)
        if self.rate:
            parse_rate(self.rate)


def parse_rate(text: str) -> tuple[int, float]:
    """``10/s`` -> (10, 1.0): starts allowed per period; refuses anything else."""
    count, sep, unit = text.strip().partition("/")
    if sep and count.strip().isdigit() and unit.strip() in RATE_PERIODS:
        n = int(count)
        if 1 <= n <= 1_000_000:
            return n, RATE_PERIODS[unit.strip()]
    raise InvalidRequest(f"rate {text!r} must look like 10/s, 30/m or 100/h (1 to 1000000)")


@dataclass(frozen=True)
class WorkersArgs:
    """Set the desired number of worker processes."""

    label: ClassVar[str] = "worker request"
    count: int

    def validate(self) -> None:
        if self.count < 0:
            raise InvalidRequest(f"worker count must not be negative, not {self.count}")
        _check_range("worker count", self.count, 0, MAX_WORKERS)


@dataclass(frozen=True)
class LogsArgs:
    """Read a job's log from ``offset``, at most ``max_bytes``."""

    label: ClassVar[str] = "logs request"
    id: str
    offset: int = 0
    max_bytes: int = 1024 * 1024

    def validate(self) -> None:
        validate_job_id(self.id)
        _check_range("offset", self.offset, 0, 2**62)
        _check_range("max_bytes", self.max_bytes, 1, MAX_FRAME_BYTES // 2)


@dataclass(frozen=True)
class ConfigKeyArgs:
    """Name one queue setting."""

    label: ClassVar[str] = "config request"
    key: str


@dataclass(frozen=True)
class ConfigSetArgs:
    """Change one queue setting; ``value`` is parsed by the setting's own type."""

    label: ClassVar[str] = "config request"
    key: str
    value: str


@dataclass(frozen=True)
class WatchArgs:
    """Subscribe to job events; ``until_idle`` ends the stream once nothing is left to run."""

    label: ClassVar[str] = "watch request"
    until_idle: bool = False


PURGEABLE_STATES = ("completed", "cancelled", "dead")
MAX_PURGE_AGE_S = 100 * 365 * 86400.0


@dataclass(frozen=True)
class PurgeArgs:
    """Remove finished jobs of one state, older than ``older_than`` seconds, with their logs."""

    label: ClassVar[str] = "purge request"
    state: str
    older_than: float
    queue: str | None = None
    dry_run: bool = False

    def validate(self) -> None:
        if self.state not in PURGEABLE_STATES:
            raise InvalidRequest(
                f"only finished jobs can be purged: state must be completed, cancelled "
                f"or dead, not {self.state!r}"
            )
        _check_range("older_than", self.older_than, 0, MAX_PURGE_AGE_S)
        if self.queue is not None:
            validate_queue_name(self.queue)


class Overlap(enum.StrEnum):
    """What a schedule does at a tick while its previous run is not final."""

    SKIP = "skip"  # no new run (the default)
    QUEUE = "queue"  # the new run waits for the previous one (after_any)
    REPLACE = "replace"  # the previous run is cancelled (or killed), the new one follows it


class CatchUp(enum.StrEnum):
    """What a schedule does with ticks that passed while the daemon was down."""

    LATEST = "latest"  # one run for all of them (the default)
    ALL = "all"  # one run for each (at most MAX_CATCHUP_RUNS)
    NONE = "none"  # none: the schedule goes on from now


MAX_CATCHUP_RUNS = 1000
# Schedule names are part of their jobs' ids (NAME.20261201T090000): the id alphabet.
SCHEDULE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}")


def validate_schedule_name(name: str) -> None:
    """Refuse schedule names outside the alphabet of job ids (they name their jobs)."""
    if not SCHEDULE_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"schedule name {name!r} must be 1-64 letters, digits, '_' or '-', "
            "not starting with '-'"
        )


@dataclass(frozen=True)
class ScheduleAddArgs:
    """A recurring job: ``job`` (an enqueue map without id, delay, run_at or parents)
    enqueued at every tick of ``cron`` in time zone ``tz``."""

    label: ClassVar[str] = "schedule"
    name: str
    cron: str
    job: dict  # type: ignore[type-arg]
    tz: str = "UTC"
    overlap: str = Overlap.SKIP.value
    catch_up: str = CatchUp.LATEST.value
    replace: bool = False  # True: an existing schedule of that name is changed

    def validate(self) -> None:
        validate_schedule_name(self.name)
        if self.overlap not in {o.value for o in Overlap}:
            raise InvalidRequest(f"overlap must be skip, queue or replace, not {self.overlap!r}")
        if self.catch_up not in {c.value for c in CatchUp}:
            raise InvalidRequest(f"catch-up must be latest, all or none, not {self.catch_up!r}")
        for key in ("id", "delay", "run_at", "after", "after_any", "unique_key"):
            if key in self.job:
                raise InvalidRequest(
                    f"a schedule's job cannot set {key!r}: each tick makes its own job"
                )
        parse_args(EnqueueArgs, self.job)


@dataclass(frozen=True)
class ScheduleNameArgs:
    """A request about one schedule."""

    label: ClassVar[str] = "schedule request"
    name: str

    def validate(self) -> None:
        validate_schedule_name(self.name)


@dataclass(frozen=True)
class ScheduleSetArgs:
    """Pause or resume a schedule."""

    label: ClassVar[str] = "schedule request"
    name: str
    paused: bool

    def validate(self) -> None:
        validate_schedule_name(self.name)


class ScheduleView(TypedDict):
    name: str
    cron: str
    tz: str
    job: dict[str, Any]
    overlap: str
    catch_up: str
    paused: bool
    created_at: float
    next_at: float | None  # None while paused
    last_at: float | None
    last_job: str | None
    last_state: str | None  # the last job's state (None once it is purged)


class PurgeView(TypedDict):
    jobs: int
    bytes_freed: int  # log files removed
    dry_run: bool


@dataclass(frozen=True)
class WaitArgs(JobIdsArgs):
    """Wait until every job in ``ids`` is final, or ``timeout`` seconds (None: no limit)."""

    label: ClassVar[str] = "wait request"
    timeout: float | None = None

    def validate(self) -> None:
        super().validate()
        _check_range("timeout", self.timeout, 0, MAX_TIMEOUT_S * 52)


@dataclass(frozen=True)
class NoArgs:
    """Requests without arguments."""

    label: ClassVar[str] = "request"


ARGS_BY_OP: dict[Op, type[Any]] = {
    Op.PING: NoArgs,
    Op.ENQUEUE: EnqueueArgs,
    Op.ENQUEUE_BATCH: EnqueueBatchArgs,
    Op.GET_JOB: JobIdArgs,
    Op.LIST_JOBS: ListArgs,
    Op.STATUS: NoArgs,
    Op.METRICS: NoArgs,
    Op.WORKERS_SET: WorkersArgs,
    Op.WORKERS_STOP: NoArgs,
    Op.DLQ_RETRY: JobIdArgs,
    Op.CANCEL: JobIdsArgs,
    Op.KILL: KillArgs,
    Op.RETRY: JobIdsArgs,
    Op.PURGE: PurgeArgs,
    Op.VACUUM: NoArgs,
    Op.SCHEDULE_ADD: ScheduleAddArgs,
    Op.SCHEDULE_LIST: NoArgs,
    Op.SCHEDULE_GET: ScheduleNameArgs,
    Op.SCHEDULE_SET: ScheduleSetArgs,
    Op.SCHEDULE_REMOVE: ScheduleNameArgs,
    Op.SCHEDULE_RUN: ScheduleNameArgs,
    Op.QUEUE_LIST: NoArgs,
    Op.QUEUE_SET: QueueSetArgs,
    Op.LOGS: LogsArgs,
    Op.CONFIG_GET: ConfigKeyArgs,
    Op.CONFIG_SET: ConfigSetArgs,
    Op.CONFIG_LIST: NoArgs,
    Op.WATCH: WatchArgs,
    Op.WAIT: WaitArgs,
    Op.FOLLOW_LOGS: JobIdArgs,
    Op.NODES: NoArgs,
    Op.SHUTDOWN: NoArgs,
}


# ---------------------------------------------------------------------------
# Results (plain maps on the wire; TypedDicts for the type checker)


class AttemptView(TypedDict):
    attempt: int
    started_at: float
    finished_at: float | None
    exit_code: int | None
    outcome: str | None
    error: str | None
    worker: str | None
    cpu_seconds: float | None  # user + system time of all its processes
    peak_bytes: int | None  # peak memory (docs/jobs.md says what is counted)


class ParentView(TypedDict):
    """A parent of a job: its state and, once it ran, its last exit code."""

    id: str
    state: str
    exit_code: int | None
    any_outcome: bool  # True: `after_any` (any final state will do)


class JobView(TypedDict):
    id: str
    command: str
    queue: str
    priority: int
    unique_key: str | None
    env: dict[str, str]
    cwd: str | None
    owner_uid: int | None
    idempotent: bool
    state: str
    attempts: int
    interruptions: int
    max_retries: int
    timeout: float
    created_at: float
    updated_at: float
    run_at: float
    last_exit_code: int | None
    last_error: str | None
    backoff_base: float
    backoff_max: float
    jitter: float
    memory: int | None  # limits (None: none of its own)
    cpus: float | None
    max_procs: int | None
    history: list[AttemptView]
    parents: list[ParentView]
    children: list[str]  # in `show` only (empty in listings)
    # Set on the answer to an enqueue with a unique key that matched an unfinished job.
    existing: NotRequired[bool]


class QueueView(TypedDict):
    """One named queue: its job counts and its settings."""

    name: str
    counts: dict[str, int]
    concurrency: int | None
    rate: str | None
    paused: bool


class WorkersView(TypedDict):
    desired: int
    running: int
    busy: int


class NodeView(TypedDict):
    """One daemon sharing the store (`queuectl nodes`; one row on a SQLite store)."""

    name: str  # its node_id
    host: str
    pid: int
    state: str  # live, gone (no heartbeat for node_timeout), stopped (cleanly)
    slots: int  # jobs it may run at once
    running: int  # jobs it holds now
    started_at: float
    heartbeat_at: float
    socket: str
    this: bool  # the daemon that answered


class StatusView(TypedDict):
    counts: dict[str, int]
    queues: dict[str, dict[str, int]]  # per queue, its counts by state (non-zero only)
    workers: WorkersView
    draining: bool
    version: str
    # Every daemon of the cluster (several share a PostgreSQL store).
    nodes: NotRequired[list[NodeView]]


class LogChunk(TypedDict):
    path: str
    data: bytes
    offset: int
    size: int
    # Set when the log is on another daemon's host (the job ran there): ask that daemon.
    node: NotRequired[str]
    host: NotRequired[str]
    socket: NotRequired[str]


class WaitedJob(TypedDict):
    """Where one waited-for job stands when ``wait`` answers."""

    id: str
    state: str
    final: bool
    last_exit_code: int | None
    last_error: str | None


class WaitView(TypedDict):
    """The answer to ``wait``: every job in the order asked; ``timed_out`` if some are not final."""

    jobs: list[WaitedJob]
    timed_out: bool


# ---------------------------------------------------------------------------
# Attempt outcomes (shown in a job's history)


class Outcome(enum.StrEnum):
    """How one attempt ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    SIGNALED = "signaled"
    OOM = "oom"  # the kernel's OOM killer ended a process of it (its memory limit)
    INTERRUPTED = "interrupted"  # its executor, the daemon or a drain stopped it
    KILLED = "killed"  # `queuectl kill` stopped it
    ERROR = "error"  # the executor could not start the command at all
