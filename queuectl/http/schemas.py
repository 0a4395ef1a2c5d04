"""JSON Schemas of the gateway's bodies and answers, from the protocol's own limits.

The daemon validates every request (one validation point); these schemas describe
the same rules for the OpenAPI document, so that generated clients and schemathesis
see what the daemon accepts.
"""

from __future__ import annotations

from typing import Any

from queuectl.protocol import (
    ENV_NAME_RE,
    JOB_ID_RE,
    MAX_BATCH_JOBS,
    MAX_ENV_VARS,
    MAX_ID_CHARS,
    MAX_LIST_LIMIT,
    MAX_PRIORITY,
    MAX_RETRIES_LIMIT,
    MAX_TIMEOUT_S,
    MAX_UNIQUE_KEY_CHARS,
    MAX_WORKERS,
    MIN_PRIORITY,
    QUEUE_NAME_RE,
    JobState,
    Outcome,
    SortKey,
)

Schema = dict[str, Any]

STATES = [s.value for s in JobState]
INT64 = 2**62  # what the daemon takes for offsets (msgpack carries 64 bits)

JOB_ID: Schema = {
    "type": "string",
    "pattern": f"^{JOB_ID_RE.pattern}$",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
}
QUEUE_NAME: Schema = {"type": "string", "pattern": f"^{QUEUE_NAME_RE.pattern}$"}
NUMBER: Schema = {"type": "number"}
NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
NULLABLE_INT: Schema = {"type": ["integer", "null"]}
NULLABLE_STR: Schema = {"type": ["string", "null"]}

NEW_JOB: Schema = {
    "type": "object",
    "required": ["command"],
    "additionalProperties": False,
    "properties": {
        # A non-blank character, no NUL; 16 Ki characters stay under 64 KiB of UTF-8.
        "command": {"type": "string", "pattern": "^[^\\u0000]*\\S[^\\u0000]*$", "maxLength": 16384},
        # null, like leaving a field out, means the queue's setting.
        "id": {**JOB_ID, "type": ["string", "null"]},
        "max_retries": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_RETRIES_LIMIT},
        "timeout": {"type": ["number", "null"], "minimum": 0.001, "maximum": MAX_TIMEOUT_S},
        "delay": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_TIMEOUT_S * 52},
        "cwd": {"type": ["string", "null"], "pattern": "^/[^\\u0000]*$"},
        "idempotent": {"type": "boolean"},
        "run_at": {"type": ["number", "null"], "minimum": 0, "maximum": 2**40},
        "priority": {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
        "queue": QUEUE_NAME,
        "unique_key": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": MAX_UNIQUE_KEY_CHARS,
        },
        # Names as the shell takes them (QUEUECTL_* is queuectl's own); values without
        # NUL; at most 64 KiB in all (which a schema cannot say).
        "env": {
            "type": ["object", "null"],
            "maxProperties": MAX_ENV_VARS,
            "propertyNames": {"pattern": f"^(?!QUEUECTL_){ENV_NAME_RE.pattern}$"},
            "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"},
        },
        "backoff_base": {"type": ["number", "null"], "minimum": 1, "maximum": 60},
        "backoff_max": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_TIMEOUT_S},
        "jitter": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    },
    # A delay or a run-at time, not both.
    "not": {
        "required": ["delay", "run_at"],
        "properties": {"delay": {"type": "number"}, "run_at": {"type": "number"}},
    },
    "example": {"id": "job1", "command": "echo Hello QueueCTL"},
}

BATCH: Schema = {
    "type": "object",
    "required": ["jobs"],
    "additionalProperties": False,
    "properties": {
        "jobs": {"type": "array", "items": NEW_JOB, "minItems": 1, "maxItems": MAX_BATCH_JOBS}
    },
}

COUNT: Schema = {
    "type": "object",
    "required": ["count"],
    "additionalProperties": False,
    "properties": {"count": {"type": "integer", "minimum": 0, "maximum": MAX_WORKERS}},
    "example": {"count": 2},
}
OPTIONAL_COUNT: Schema = {**COUNT, "required": []}

SETTING_VALUE: Schema = {
    "type": "object",
    "required": ["value"],
    "additionalProperties": False,
    "properties": {"value": {"type": ["string", "number"]}},
    "example": {"value": "3"},
}

ATTEMPT: Schema = {
    "type": "object",
    "required": ["attempt", "started_at"],
    "properties": {
        "attempt": {"type": "integer"},
        "started_at": NUMBER,
        "finished_at": NULLABLE_NUMBER,
        "exit_code": NULLABLE_INT,
        "outcome": {"type": ["string", "null"], "enum": [*(o.value for o in Outcome), None]},
        "error": NULLABLE_STR,
        "worker": NULLABLE_STR,
    },
}

JOB: Schema = {
    "type": "object",
    "required": ["id", "command", "state", "attempts", "max_retries", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "command": {"type": "string"},
        "queue": {"type": "string"},
        "priority": {"type": "integer"},
        "unique_key": NULLABLE_STR,
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cwd": NULLABLE_STR,
        "owner_uid": NULLABLE_INT,
        "idempotent": {"type": "boolean"},
        "state": {"type": "string", "enum": STATES},
        "attempts": {"type": "integer"},
        "interruptions": {"type": "integer"},
        "max_retries": {"type": "integer"},
        "timeout": NUMBER,
        "created_at": NUMBER,
        "updated_at": NUMBER,
        "run_at": NUMBER,
        "last_exit_code": NULLABLE_INT,
        "last_error": NULLABLE_STR,
        "history": {"type": "array", "items": ATTEMPT},
        "existing": {"type": "boolean"},
    },
}

JOBS: Schema = {
    "type": "object",
    "required": ["jobs"],
    "properties": {"jobs": {"type": "array", "items": JOB}},
}

KILL: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "signal": {
            "type": "string",
            "enum": ["TERM", "INT", "HUP", "KILL", "QUIT", "USR1", "USR2"],
        },
        "retry": {"type": "boolean"},
    },
    "example": {"signal": "TERM", "retry": False},
}

KILLING: Schema = {
    "type": "object",
    "required": ["killing"],
    "properties": {"killing": {"type": "array", "items": {"type": "string"}}},
}

QUEUE: Schema = {
    "type": "object",
    "required": ["name", "counts", "paused"],
    "properties": {
        "name": {"type": "string"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "concurrency": NULLABLE_INT,
        "rate": NULLABLE_STR,
        "paused": {"type": "boolean"},
    },
}

QUEUE_SETTINGS: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "concurrency": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_WORKERS * 1000},
        # N/s, N/m or N/h with N from 1 to 1000000; "" removes the limit.
        "rate": {"type": ["string", "null"], "pattern": "^(|[1-9][0-9]{0,5}/[smh])$"},
        "paused": {"type": ["boolean", "null"]},
    },
    "example": {"concurrency": 4, "rate": "10/s"},
}

WORKERS: Schema = {
    "type": "object",
    "required": ["desired", "running", "busy"],
    "properties": {k: {"type": "integer"} for k in ("desired", "running", "busy")},
}

NODE: Schema = {
    "type": "object",
    "required": ["name", "host", "pid", "state", "slots", "running", "heartbeat_at", "this"],
    "properties": {
        "name": {"type": "string"},
        "host": {"type": "string"},
        "pid": {"type": "integer"},
        "state": {"type": "string", "enum": ["live", "gone", "stopped"]},
        "slots": {"type": "integer"},
        "running": {"type": "integer"},
        "started_at": {"type": "number"},
        "heartbeat_at": {"type": "number"},
        "socket": {"type": "string"},
        "this": {"type": "boolean"},
    },
}

SETTING: Schema = {
    "type": "object",
    "required": ["key", "value", "default", "help"],
    "properties": {"key": {"type": "string"}, "help": {"type": "string"}},
}

JOB_PAGE: Schema = {
    "type": "object",
    "required": ["jobs", "total"],
    "properties": {"jobs": {"type": "array", "items": JOB}, "total": {"type": "integer"}},
}

IDS: Schema = {
    "type": "object",
    "required": ["count", "ids"],
    "properties": {
        "count": {"type": "integer"},
        "ids": {"type": "array", "items": {"type": "string"}},
    },
}

SEED_STATUS: Schema = {
    "type": "object",
    "required": [*STATES, "stop_flag", "workers"],
    "properties": {
        **{s: {"type": "integer"} for s in STATES},
        "stop_flag": {"type": "integer", "enum": [0, 1]},
        "workers": WORKERS,
        "draining": {"type": "boolean"},
        "version": {"type": "string"},
    },
}

SEED_ENQUEUED: Schema = {
    "type": "object",
    "required": ["status", "job_id", "job"],
    "properties": {"status": {"const": "success"}, "job_id": {"type": "string"}, "job": JOB},
}

SEED_RETRIED: Schema = {
    "type": "object",
    "required": ["status", "message", "job"],
    "properties": {"status": {"const": "success"}, "message": {"type": "string"}, "job": JOB},
}

SEED_WORKERS: Schema = {
    "type": "object",
    "required": ["status", "workers", "desired", "running", "busy"],
    "properties": {
        "status": {"type": "string", "enum": ["started", "stopping"]},
        "workers": {"type": "integer"},
        **WORKERS["properties"],
    },
}

SEED_LOG: Schema = {
    "type": "object",
    "required": ["job_id", "log"],
    "properties": {"job_id": {"type": "string"}, "log": {"type": "string"}},
}

SEED_METRICS: Schema = {
    "type": "object",
    "required": ["total_jobs", "completed_jobs", "pending_jobs", "failed_jobs", "success_rate"],
    "properties": {
        "total_jobs": {"type": "integer"},
        "completed_jobs": {"type": "integer"},
        "pending_jobs": {"type": "integer"},
        "failed_jobs": {"type": "integer"},
        "success_rate": {"type": "string"},
        "active_workers": {"type": "integer"},
    },
}

PING: Schema = {"type": "object", "required": ["pong"], "properties": {"pong": {"type": "boolean"}}}

PROBLEM: Schema = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
    },
}

LIST_QUERY: dict[str, Schema] = {
    "state": {"type": "string", "enum": STATES},
    "queue": QUEUE_NAME,
    "since": {"type": "number"},
    "sort": {"type": "string", "enum": [k.value for k in SortKey]},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 100},
    "offset": {"type": "integer", "minimum": 0, "maximum": INT64, "default": 0},
}
