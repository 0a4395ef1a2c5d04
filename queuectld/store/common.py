"""What every SQL backend shares: the named-query loader and the row -> record builders.

Rows are read by column name only (``sqlite3.Row`` and psycopg's ``dict_row`` both
do that), so one builder serves both stores.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from queuectl.protocol import JobState
from queuectld.jobs import Attempt, Job, Parent
from queuectld.queues import QueueLimits
from queuectld.store.base import NodeRow, ScheduleRow


class Row(Protocol):
    """A result row read by column name (``sqlite3.Row``, a ``dict``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def load_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: NAME`` blocks into a dict of named queries."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name:"):
            if name:
                queries[name] = "\n".join(lines).strip()
            name, lines = line.split(":", 1)[1].strip(), []
        elif name is not None and not line.startswith("--"):
            lines.append(line)
    if name:
        queries[name] = "\n".join(lines).strip()
    return queries


def job_from_row(row: Row, history: tuple[Attempt, ...] = ()) -> Job:
    """A job from its ``jobs`` row (``SELECT *``)."""
    return Job(
        id=row["id"],
        command=row["command"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        interruptions=row["interruptions"],
        max_retries=row["max_retries"],
        timeout=row["timeout"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        run_at=row["run_at"],
        last_exit_code=row["last_exit_code"],
        last_error=row["last_error"],
        lease_owner=row["lease_owner"],
        lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"],
        cwd=row["cwd"],
        owner_uid=row["owner_uid"],
        idempotent=bool(row["idempotent"]),
        priority=row["priority"],
        queue=row["queue"],
        unique_key=row["unique_key"],
        env=json.loads(row["env"]) if row["env"] else {},
        backoff_base=row["backoff_base"],
        backoff_max=row["backoff_max"],
        jitter=row["jitter"],
        memory=row["memory_max"],
        cpus=row["cpus"],
        max_procs=row["max_procs"],
        history=history,
        n_parents=row["n_parents"],
    )


def attempt_from_row(row: Row) -> Attempt:
    """One entry of a job's attempts history from its ``attempts`` row."""
    return Attempt(
        attempt=row["attempt"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        exit_code=row["exit_code"],
        outcome=row["outcome"],
        error=row["error"],
        worker=row["worker"],
        cpu_seconds=row["cpu_seconds"],
        peak_bytes=row["peak_bytes"],
    )


def parent_from_row(row: Row) -> Parent:
    """A parent of a job from a ``parents_of`` row."""
    return Parent(
        id=row["id"],
        state=JobState(row["state"]),
        exit_code=row["last_exit_code"],
        any_outcome=bool(row["any_outcome"]),
    )


def schedule_from_row(row: Row) -> ScheduleRow:
    """A schedule from its ``schedules`` row."""
    return ScheduleRow(
        name=row["name"],
        cron=row["cron"],
        tz=row["tz"],
        job=row["job"],
        overlap=row["overlap"],
        catch_up=row["catch_up"],
        paused=bool(row["paused"]),
        owner_uid=row["owner_uid"],
        created_at=row["created_at"],
        next_at=row["next_at"],
        last_at=row["last_at"],
        last_job=row["last_job"],
    )


def limits_from_row(row: Row) -> QueueLimits:
    """A queue's settings and token bucket from its ``queues`` row."""
    return QueueLimits(
        name=row["name"],
        concurrency=row["concurrency"],
        rate_count=row["rate_count"],
        rate_period=row["rate_period"],
        paused=bool(row["paused"]),
        tokens=row["tokens"],
        tokens_at=row["tokens_at"],
    )


def node_from_row(row: Row, running: int = 0) -> NodeRow:
    """A cluster member from its ``nodes`` row."""
    return NodeRow(
        name=row["name"],
        host=row["host"],
        pid=row["pid"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        slots=row["slots"],
        socket=row["socket"],
        stopped_at=row["stopped_at"],
        rescued_at=row["rescued_at"],
        running=running,
    )


def node_params(node: NodeRow) -> dict[str, Any]:
    """The parameters of the ``register_node`` query."""
    return {
        "name": node.name,
        "host": node.host,
        "pid": node.pid,
        "started_at": node.started_at,
        "heartbeat_at": node.heartbeat_at,
        "slots": node.slots,
        "socket": node.socket,
    }
