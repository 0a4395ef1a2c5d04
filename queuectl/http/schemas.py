"""JSON Schemas of the gateway's bodies and answers, from the protocol's own limits.

The daemon validates every request (one validation point); these schemas describe
the same rules for the OpenAPI document, so that generated clients and schemathesis
see what the daemon accepts.
"""

from __future__ import annotations

from typing import Any

from queuectl.protocol import (
    JOB_ID_RE,
    MAX_BATCH_JOBS,
    MAX_ID_CHARS,
    MAX_LIST_LIMIT,
    MAX_RETRIES_LIMIT,
    MAX_TIMEOUT_S,
    MAX_WORKERS,
    JobState,
    Outcome,
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
        "command": {"type": "string", "pattern": r"^[^\x00]*\S[^\x00]*$", "maxLength": 16384},
        # null, like leaving a field out, means the queue's setting.
        "id": {**JOB_ID, "type": ["string", "null"]},
        "max_retries": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_RETRIES_LIMIT},
        "timeout": {"type": ["number", "null"], "minimum": 0.001, "maximum": MAX_TIMEOUT_S},
        "delay": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_TIMEOUT_S * 52},
        "cwd": {"type": ["string", "null"], "pattern": "^/[^\\u0000]*$"},
        "idempotent": {"type": "boolean"},
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
    },
}

WORKERS: Schema = {
    "type": "object",
    "required": ["desired", "running", "busy"],
    "properties": {k: {"type": "integer"} for k in ("desired", "running", "busy")},
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
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 100},
    "offset": {"type": "integer", "minimum": 0, "maximum": INT64, "default": 0},
}
