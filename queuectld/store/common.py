"""What every SQL backend shares: the named-query loader, the row -> record builders,
and :class:`SQLStore`, the Store methods written once over named queries.

Rows are read by column name only (``sqlite3.Row`` and psycopg's ``dict_row`` both
do that), so one builder serves both stores.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from queuectl.errors import Conflict, InternalError, NotFound
from queuectl.protocol import JobState, SortKey
from queuectld.jobs import (
    Attempt,
    AttemptResult,
    Claim,
    Job,
    NewJob,
    Parent,
    can_transition,
)
from queuectld.queues import QueueLimits
from queuectld.store.base import JobFilter, NodeRow, Purged, ScheduleRow, Store


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
        node=row["lease_owner"],
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


class RowConflict(Exception):
    """A statement broke a uniqueness constraint (an id, a unique key); raised by
    :meth:`SQLStore._run_checked` so the shared code can name the conflict."""


class Cursor(Protocol):
    """What the shared code reads of a driver's cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SQLStore(Store):
    """The queries every SQL backend runs, by name; a backend supplies the connection,
    the transactions and the SQL text of each named query (same names, same
    ``:param`` parameters, same result columns).

    Lists of ids are passed as one JSON array parameter (``json.dumps``).
    """

    @abc.abstractmethod
    def _run(self, name: str, params: dict[str, Any] | None = None) -> Cursor:
        """Execute the named query; driver errors become ``queuectl.errors`` types."""

    @abc.abstractmethod
    def _run_many(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        """One named statement over many parameter sets (nothing to do for none)."""

    @abc.abstractmethod
    def _run_checked(self, name: str, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """The named statement over each of ``rows`` in a savepoint of its own, with the
        rows it returns; raises :class:`RowConflict` (the savepoint rolled back) when it
        breaks a uniqueness constraint."""

    # -- jobs -----------------------------------------------------------------

    def _assign_ids(self, jobs: Sequence[NewJob]) -> list[str]:
        """The id of every job: its own, or the next free number (one meta read and write)."""
        ids: list[str] = []
        taken: set[str] = set()  # ids earlier in this batch
        number: int | None = None
        for new in jobs:
            if new.id is not None:
                ids.append(new.id)
                taken.add(new.id)
                continue
            if number is None:
                row = self._run("next_job_number").fetchone()
                number = int(row["value"]) if row else 1
            while str(number) in taken or self._run("job_exists", {"id": str(number)}).fetchone():
                number += 1
            ids.append(str(number))
            taken.add(str(number))
            number += 1
        if number is not None:
            self._run("set_meta", {"key": "next_job_number", "value": str(number)})
        return ids

    def add_jobs(self, jobs: Sequence[NewJob], now: float, _retried: bool = False) -> list[Job]:
        keys = [new.unique_key for new in jobs if new.unique_key is not None]
        holders = {j.unique_key: j for j in self.unfinished_with_keys(keys)}
        held = set(holders)  # keys of jobs stored before this call
        fresh = [new for new in jobs if new.unique_key is None or new.unique_key not in holders]
        ids = iter(self._assign_ids(fresh))
        out: list[Job] = []
        rows: list[dict[str, Any]] = []
        for new in jobs:
            if new.unique_key is not None and new.unique_key in holders:
                out.append(holders[new.unique_key])  # already there: stored once
                continue
            run_at = float(now if new.run_at is None else new.run_at)
            state = JobState.WAITING if run_at > now else JobState.PENDING
            job = Job(
                id=next(ids),
                command=new.command,
                state=JobState.BLOCKED if new.parents else state,
                attempts=0,
                interruptions=0,
                max_retries=None if new.max_retries is None else int(new.max_retries),
                timeout=None if new.timeout is None else float(new.timeout),
                created_at=now,
                updated_at=now,
                run_at=run_at,
                cwd=new.cwd,
                owner_uid=new.owner_uid,
                idempotent=bool(new.idempotent),
                priority=new.priority,
                queue=new.queue,
                unique_key=new.unique_key,
                env=dict(new.env),
                backoff_base=new.backoff_base,
                backoff_max=new.backoff_max,
                jitter=new.jitter,
                memory=new.memory,
                cpus=new.cpus,
                max_procs=new.max_procs,
                n_parents=len(new.parents),
            )
            if job.unique_key is not None:
                holders[job.unique_key] = job  # a later line with the key gets this job
            out.append(job)
            rows.append(
                {
                    "id": job.id,
                    "command": job.command,
                    "cwd": job.cwd,
                    "owner_uid": job.owner_uid,
                    "idempotent": int(job.idempotent),
                    "max_retries": job.max_retries,
                    "timeout": job.timeout,
                    "state": job.state.value,
                    "queue": job.queue,
                    "priority": job.priority,
                    "unique_key": job.unique_key,
                    "env": json.dumps(job.env) if job.env else None,
                    "backoff_base": job.backoff_base,
                    "backoff_max": job.backoff_max,
                    "jitter": job.jitter,
                    "memory_max": job.memory,
                    "cpus": job.cpus,
                    "max_procs": job.max_procs,
                    "now": now,
                    "run_at": job.run_at,
                    "n_parents": job.n_parents,
                }
            )
        try:
            # One statement for the whole batch; its own savepoint, so a conflict can be
            # named below on the state from before the batch.
            self._run_checked("insert_jobs", rows)
        except RowConflict:
            seen: set[str] = set()
            for row in rows:
                job_id = row["id"]
                if job_id in seen or self._run("job_exists", {"id": job_id}).fetchone():
                    raise Conflict(
                        f"a job with id {job_id!r} already exists; choose another id"
                    ) from None
                seen.add(job_id)
            now_held = {j.unique_key for j in self.unfinished_with_keys(keys)} if keys else set()
            if not _retried and now_held - held:
                # Another user of the store (a PostgreSQL host) stored a job with one of
                # these unique keys since we looked: now it is seen, and returned.
                return self.add_jobs(jobs, now, _retried=True)
            raise InternalError("a new job broke a uniqueness constraint") from None
        return out

    def add_dependencies(self, children: Sequence[tuple[str, NewJob]]) -> None:
        rows = [
            {"child": child, "parent": parent, "pos": pos, "any_outcome": int(any_outcome)}
            for child, new in children
            for pos, (parent, any_outcome) in enumerate(
                [(p, False) for p in new.after] + [(p, True) for p in new.after_any]
            )
        ]
        self._run_many("insert_dependency", rows)

    def parents_of(self, ids: Sequence[str]) -> dict[str, tuple[Parent, ...]]:
        out: dict[str, list[Parent]] = {}
        for r in self._run("parents_of", {"ids": json.dumps(list(ids))}):
            out.setdefault(r["child"], []).append(parent_from_row(r))
        return {child: tuple(parents) for child, parents in out.items()}

    def children_of(self, job_id: str) -> list[str]:
        return [r["id"] for r in self._run("children_of", {"id": job_id})]

    def blocked_children(self, ids: Sequence[str]) -> list[str]:
        return [r["id"] for r in self._run("blocked_children", {"ids": json.dumps(list(ids))})]

    def unblock_jobs(self, ids: Sequence[str], now: float) -> list[Job]:
        params = {"ids": json.dumps(list(ids)), "now": now}
        return [job_from_row(r) for r in self._run("unblock_jobs", params)]

    def block_jobs(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return [r["id"] for r in self._run("block_jobs", {"ids": json.dumps(list(ids))})]

    def unfinished_with_keys(self, keys: Sequence[str]) -> list[Job]:
        if not keys:
            return []
        return [
            job_from_row(r) for r in self._run("unfinished_with_keys", {"keys": json.dumps(keys)})
        ]

    def get_jobs(self, ids: Sequence[str]) -> dict[str, Job]:
        rows = self._run("jobs_by_ids", {"ids": json.dumps(list(ids))})
        return {r["id"]: job_from_row(r) for r in rows}

    def get_job(self, job_id: str, with_history: bool = False) -> Job | None:
        row = self._run("get_job", {"id": job_id}).fetchone()
        if row is None:
            return None
        history: tuple[Attempt, ...] = ()
        if with_history:
            history = tuple(
                attempt_from_row(a) for a in self._run("get_attempts", {"seq": row["seq"]})
            )
            parents = self.parents_of([job_id]).get(job_id, ())
            children = tuple(self.children_of(job_id))
            return dataclasses.replace(
                job_from_row(row, history), parents=parents, children=children
            )
        return job_from_row(row, history)

    def find_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        if where.queue is None and where.since is None and where.sort is SortKey.OLDEST:
            # The common listings, each on an index of its own.
            params: dict[str, Any] = {
                "limit": limit,
                "offset": offset,
                "owner_uid": where.owner_uid,
            }
            query = "list_jobs" if where.owner_uid is None else "list_jobs_of_owner"
            if where.state is not None:
                query += "_in_state"
                params["state"] = where.state.value
            return [job_from_row(r) for r in self._run(query, params)]
        params = {**self._filter(where), "limit": limit, "offset": offset}
        return [
            job_from_row(r) for r in self._run(f"list_jobs_filtered_{where.sort.value}", params)
        ]

    def count_jobs(self, where: JobFilter) -> int:
        return int(self._run("count_jobs_filtered", self._filter(where)).fetchone()["n"])

    @staticmethod
    def _filter(where: JobFilter) -> dict[str, Any]:
        return {
            "state": None if where.state is None else where.state.value,
            "queue": where.queue,
            "owner_uid": where.owner_uid,
            "since": where.since if where.since is not None else float("-inf"),
        }

    def count_by_queue(self, owner_uid: int | None = None) -> dict[str, dict[JobState, int]]:
        if owner_uid is None:
            rows = self._run("count_by_queue")
        else:
            rows = self._run("count_by_queue_of_owner", {"owner_uid": owner_uid})
        out: dict[str, dict[JobState, int]] = {}
        for row in rows:
            if row["n"]:
                out.setdefault(row["queue"], {})[JobState(row["state"])] = row["n"]
        return out

    def promote_due(self, now: float) -> int:
        return self._run("promote_due", {"now": now}).rowcount

    def claim_from_queues(
        self,
        owner: str,
        allowed: dict[str, int],
        limit: int,
        now: float,
        default_timeout: float,
        lease_margin: float,
    ) -> list[Claim]:
        params: dict[str, Any] = {
            "now": now,
            "owner": owner,
            "default_timeout": default_timeout,
            "lease_margin": lease_margin,
        }
        claimed = self._claim_rows(allowed, limit, params)
        claimed.sort(key=lambda r: (-r["priority"], r["run_at"], r["seq"]))  # RETURNING: no order
        self._run_many(
            "insert_attempt",
            [{"seq": r["seq"], "attempt": r["runs"], "owner": owner, "now": now} for r in claimed],
        )
        return [
            Claim(job=job_from_row(r), attempt=r["runs"], lease_token=r["lease_token"])
            for r in claimed
        ]

    def _ready(self, allowed: dict[str, int], limit: int) -> list[tuple[str, int]]:
        """The next ``limit`` ready jobs of several queues in claim order, as (queue,
        seq): the first few of each queue (a descent of jobs_ready each), merged."""
        candidates: list[tuple[int, float, int, str]] = []
        for queue, n in allowed.items():
            rows = self._run("ready_in_queue", {"queue": queue, "limit": min(n, limit)})
            candidates += [(-r["priority"], r["run_at"], r["seq"], queue) for r in rows]
        return [(queue, seq) for _, _, seq, queue in sorted(candidates)[:limit]]

    def _claim_rows(self, allowed: dict[str, int], limit: int, params: dict[str, Any]) -> list[Any]:
        """Lease the jobs :meth:`claim_from_queues` takes; their rows, in any order."""
        if len(allowed) == 1:
            ((queue, n),) = allowed.items()
            return self._run(
                "claim_from_queue", {**params, "queue": queue, "limit": min(n, limit)}
            ).fetchall()
        chosen = [seq for _, seq in self._ready(allowed, limit)]
        return self._run("claim_seqs", {**params, "seqs": json.dumps(chosen)}).fetchall()

    def next_timed_at(self) -> float | None:
        row = self._run("next_timed_at").fetchone()
        return None if row is None else float(row["run_at"])

    def queue_limits(self) -> dict[str, QueueLimits]:
        return {r["name"]: limits_from_row(r) for r in self._run("queue_settings")}

    def set_queue(self, limits: QueueLimits) -> None:
        self._run(
            "upsert_queue",
            {
                "name": limits.name,
                "concurrency": limits.concurrency,
                "rate_count": limits.rate_count,
                "rate_period": limits.rate_period,
                "paused": int(limits.paused),
            },
        )

    def set_tokens(self, name: str, tokens: float, now: float) -> None:
        self._run("set_tokens", {"name": name, "tokens": tokens, "now": now})

    def _leases(self, ids: Sequence[str]) -> dict[str, Row]:
        rows = self._run("leases_of", {"ids": json.dumps(list(ids))}).fetchall()
        return {r["id"]: r for r in rows}

    def record_attempts(self, results: Sequence[AttemptResult]) -> list[bool]:
        for result in results:
            if not can_transition(JobState.PROCESSING, result.next_state):
                raise InternalError(
                    f"job {result.job_id!r} cannot go from processing to {result.next_state.value}"
                )
        leases = self._leases([r.job_id for r in results])
        ok: list[bool] = []
        held: set[str] = set()
        jobs: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        for result in results:
            row = leases.get(result.job_id)
            valid = (
                row is not None
                and row["state"] == JobState.PROCESSING.value
                and row["lease_token"] == result.lease_token
                and result.job_id not in held  # one result per lease
            )
            ok.append(valid)
            if not valid or row is None:
                continue
            held.add(result.job_id)
            jobs.append(
                {
                    "seq": row["seq"],
                    "token": result.lease_token,
                    "state": result.next_state.value,
                    "attempts": result.attempts,
                    "interruptions": result.interruptions,
                    "run_at": result.run_at,
                    "now": result.finished_at,
                    "exit_code": result.exit_code,
                    "error": result.job_error or result.error,
                }
            )
            attempts.append(
                {
                    "seq": row["seq"],
                    "attempt": result.attempt,
                    "started_at": result.started_at,
                    "finished_at": result.finished_at,
                    "exit_code": result.exit_code,
                    "outcome": result.outcome,
                    "error": result.error,
                    "worker": result.worker,
                    "cpu_seconds": result.cpu_seconds,
                    "peak_bytes": result.peak_bytes,
                }
            )
        self._run_many("finish_job", jobs)
        self._run_many("finish_attempt", attempts)
        return ok

    def release_claims(self, claims: Sequence[Claim]) -> list[bool]:
        leases = self._leases([c.job.id for c in claims])
        ok: list[bool] = []
        released: list[dict[str, Any]] = []
        seen: set[str] = set()
        for claim in claims:
            row = leases.get(claim.job.id)
            valid = (
                row is not None
                and row["state"] == JobState.PROCESSING.value
                and row["lease_token"] == claim.lease_token
                and row["runs"] == claim.attempt
                and claim.job.id not in seen
            )
            ok.append(valid)
            if valid and row is not None:
                seen.add(claim.job.id)
                released.append(
                    {"seq": row["seq"], "token": claim.lease_token, "attempt": claim.attempt}
                )
        self._run_many("release_job", released)
        self._run_many("delete_attempt", released)
        return ok

    def leased_jobs(self, owner: str | None, expired_before: float | None) -> list[Claim]:
        if owner is None:
            rows = self._run("leased_jobs")
        else:
            rows = self._run("leased_jobs_of_owner", {"owner": owner})
        claims = []
        for row in rows:
            if expired_before is not None and (row["lease_expires_at"] or 0) >= expired_before:
                continue
            claims.append(
                Claim(job=job_from_row(row), attempt=row["runs"], lease_token=row["lease_token"])
            )
        return claims

    def restart_jobs(self, ids: Sequence[str], now: float, states: Sequence[JobState]) -> list[Job]:
        params = {
            "ids": json.dumps(list(ids)),
            "now": now,
            "states": json.dumps([s.value for s in states]),
        }
        try:
            rows = self._run_checked("retry_jobs", [params])
        except RowConflict:
            # The unique-key index: another unfinished job holds a retried job's key.
            jobs = self.get_jobs(ids)
            keys = [j.unique_key for j in jobs.values() if j.unique_key is not None]
            for holder in self.unfinished_with_keys(keys):
                raise Conflict(
                    f"job {holder.id!r} holds the unique key {holder.unique_key!r} and is "
                    f"{holder.state.value}; retry once it is finished"
                ) from None
            raise InternalError("a retried job broke a uniqueness constraint") from None
        return [job_from_row(r) for r in rows]

    def mark_cancelled(self, ids: Sequence[str], now: float, reason: str) -> list[Job]:
        params = {"ids": json.dumps(list(ids)), "now": now, "reason": reason}
        return [job_from_row(r) for r in self._run("cancel_jobs", params)]

    # -- retention ------------------------------------------------------------

    def purge_jobs(
        self,
        state: JobState,
        before: float,
        queue: str | None,
        limit: int,
        after: tuple[float, int] = (float("-inf"), -1),
        dry_run: bool = False,
    ) -> Purged:
        params = {
            "state": state.value,
            "before": before,
            "queue": queue,
            "limit": limit,
            "after_at": after[0],
            "after_seq": after[1],
        }
        rows = self._run("purge_candidates", params).fetchall()
        if rows and not dry_run:
            self._run("delete_jobs", {"seqs": json.dumps([r["seq"] for r in rows])})
        last = (rows[-1]["updated_at"], rows[-1]["seq"]) if rows else after
        return Purged([r["id"] for r in rows], last[0], last[1])

    # -- schedules --------------------------------------------------------------

    def schedules(self) -> list[ScheduleRow]:
        return [schedule_from_row(r) for r in self._run("schedules")]

    def get_schedule(self, name: str) -> ScheduleRow | None:
        row = self._run("get_schedule", {"name": name}).fetchone()
        return None if row is None else schedule_from_row(row)

    def put_schedule(self, row: ScheduleRow, replace: bool) -> None:
        exists = self.get_schedule(row.name) is not None
        if exists and not replace:
            raise Conflict(
                f"a schedule named {row.name!r} already exists; remove it first, or use --replace"
            )
        if replace and not exists:
            raise NotFound(f"no schedule named {row.name!r}")
        params = {
            "name": row.name,
            "cron": row.cron,
            "tz": row.tz,
            "job": row.job,
            "overlap": row.overlap,
            "catch_up": row.catch_up,
            "owner_uid": row.owner_uid,
            "next_at": row.next_at,
        }
        if replace:
            self._run("replace_schedule", params)
        else:
            self._run(
                "insert_schedule", {**params, "paused": int(row.paused), "now": row.created_at}
            )

    def delete_schedule(self, name: str) -> bool:
        return self._run("delete_schedule", {"name": name}).rowcount > 0

    def set_schedule_paused(self, name: str, paused: bool, next_at: float) -> bool:
        params = {"name": name, "paused": int(paused), "next_at": next_at}
        return self._run("set_schedule_paused", params).rowcount > 0

    def schedule_progress(
        self, name: str, next_at: float, last_at: float | None, last_job: str | None
    ) -> None:
        params = {"name": name, "next_at": next_at, "last_at": last_at, "last_job": last_job}
        self._run("schedule_progress", params)

    def next_schedule_at(self) -> float | None:
        row = self._run("next_schedule_at").fetchone()
        return None if row is None or row["at"] is None else float(row["at"])

    # -- cluster membership ---------------------------------------------------

    def register_node(self, node: NodeRow) -> NodeRow | None:
        row = self._run("get_node", {"name": node.name}).fetchone()
        self._run("register_node", node_params(node))
        return None if row is None else node_from_row(row)

    def heartbeat_node(self, name: str, started_at: float, now: float, slots: int) -> bool:
        params = {"name": name, "started_at": started_at, "now": now, "slots": slots}
        return self._run("heartbeat_node", params).rowcount > 0

    def stop_node(self, name: str, started_at: float, now: float) -> None:
        self._run("stop_node", {"name": name, "started_at": started_at, "now": now})

    def nodes(self) -> list[NodeRow]:
        return [node_from_row(r, int(r["running"])) for r in self._run("nodes")]

    def take_dead_nodes(self, stale_before: float, now: float) -> list[NodeRow]:
        rows = self._run("take_dead_nodes", {"stale_before": stale_before, "now": now})
        return sorted((node_from_row(r) for r in rows), key=lambda n: n.name)

    # -- settings -------------------------------------------------------------

    def get_settings(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._run("get_settings")}

    def set_setting(self, key: str, value: str) -> None:
        self._run("set_setting", {"key": key, "value": value})

    # -- metrics --------------------------------------------------------------

    def attempt_stats(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        for row in self._run("attempt_stats"):
            outcome = row["outcome"] or "unknown"
            stats[f"attempts_{outcome}"] = row["n"]
            stats[f"mean_seconds_{outcome}"] = row["mean_s"] or 0.0
            stats[f"max_seconds_{outcome}"] = row["max_s"] or 0.0
            stats[f"cpu_seconds_{outcome}"] = row["cpu_s"] or 0.0
            stats[f"max_peak_bytes_{outcome}"] = row["peak"] or 0
        return stats
