"""The one table of the HTTP API: route → Client call → statuses.

Adding an operation is one :class:`Operation` entry: the app routes it, the OpenAPI
document describes it and the tests find it from here. The seed's endpoints keep the
seed's paths and answer shapes; the others follow one resource layout (``/jobs``,
``/jobs/{id}``, ``/workers``, ``/config``). Input is checked by the daemon (the one
validation point for every transport); the gateway only turns HTTP into arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from queuectl.client import Client
from queuectl.errors import Conflict, InvalidRequest, NotFound
from queuectl.http import schemas as s
from queuectl.protocol import MAX_LIST_LIMIT, JobState, validate_queue_name


@dataclass(frozen=True)
class Inputs:
    """One request's arguments: path parameters, query string, JSON body (None if none)."""

    path: Mapping[str, str]
    query: Mapping[str, str]
    body: Any

    def object_body(self, example: str) -> dict[str, Any]:
        """The JSON body, which must be an object; ``example`` is shown when it is not."""
        if not isinstance(self.body, dict):
            raise InvalidRequest(f"send a JSON object such as {example} as the request body")
        return self.body

    def fields(self, example: str, *known: str) -> dict[str, Any]:
        """An object body holding only the ``known`` fields (none is required here)."""
        body = {} if self.body is None else self.object_body(example)
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}; send {example}")
        return body

    def integer(self, name: str, default: int) -> int:
        """A whole-number query parameter (the daemon checks its range)."""
        text = self.query.get(name)
        if text is None:
            return default
        if not (text.isascii() and text.isdigit()):
            raise InvalidRequest(f"query parameter {name!r} must be a whole number, not {text!r}")
        return int(text)

    def number(self, name: str) -> float | None:
        """A number query parameter such as a Unix time (the daemon checks its range)."""
        text = self.query.get(name)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidRequest(f"query parameter {name!r} must be a number, not {text!r}")
        return value


Call = Callable[[Client, Inputs], Any]


@dataclass(frozen=True)
class Operation:
    """One HTTP operation and the Client call behind it."""

    name: str  # the OpenAPI operationId
    method: str
    path: str  # Starlette syntax: /jobs/{id}
    summary: str
    call: Call
    result: s.Schema
    ok: int = 200
    body: s.Schema | None = None
    body_required: bool = True
    query: Mapping[str, s.Schema] = field(default_factory=dict)
    # Daemon refusals this operation can meet beyond the common ones (400, 503).
    refusals: tuple[int, ...] = ()
    tag: str = "jobs"

    @property
    def mutating(self) -> bool:
        return self.method != "GET"

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every status it can answer (the OpenAPI document lists each)."""
        codes = {self.ok, 400, 401, 502, 503, *self.refusals}
        if "{" in self.path:
            codes.add(404)
        if self.mutating:
            codes.add(403)  # a foreign Origin
        if self.body is not None:
            codes.add(413)
        return tuple(sorted(codes))


# -- the calls ---------------------------------------------------------------------


def _job_id(i: Inputs) -> str:
    return i.path["id"]


def _seed_enqueue(c: Client, i: Inputs) -> dict[str, Any]:
    job = c.enqueue_spec(i.object_body('{"id":"job1","command":"echo hi"}'))
    return {"status": "success", "job_id": job["id"], "job": job}


def _enqueue(c: Client, i: Inputs) -> Any:
    return c.enqueue_spec(i.object_body('{"command":"echo hi"}'))


def _enqueue_batch(c: Client, i: Inputs) -> dict[str, Any]:
    jobs = i.object_body('{"jobs":[{"command":"true"}]}').get("jobs")
    if not isinstance(jobs, list):
        raise InvalidRequest('field "jobs" must be a list of job objects')
    ids = c.enqueue_batch(jobs)
    return {"count": len(ids), "ids": ids}


def _count(i: Inputs, required: bool) -> int:
    body = i.fields('{"count": 2}', "count")
    count = body.get("count", 1)
    if required and "count" not in body:
        raise InvalidRequest('the body is missing "count"; send {"count": 2}')
        raise InvalidRequest('the body is missing "count"; send {"count": N}')
    if not isinstance(count, int) or isinstance(count, bool):
        raise InvalidRequest('"count" must be a whole number')
    return count


def _seed_workers_start(c: Client, i: Inputs) -> dict[str, Any]:
    view = c.set_workers(_count(i, required=False))
    return {"status": "started", "workers": view["desired"], **view}


def _seed_workers_stop(c: Client, i: Inputs) -> dict[str, Any]:
    view = c.stop_workers()
    return {"status": "stopping", "workers": 0, **view}


def _seed_status(c: Client, i: Inputs) -> dict[str, Any]:
    st = c.status()
    workers = st["workers"]
    return {
        **st["counts"],
        # The seed's flag: 1 once `worker stop` asked the workers to stop.
        "stop_flag": int(workers["desired"] == 0),
        "workers": workers,
        "draining": st["draining"],
        "version": st["version"],
    }


def seed_metrics(c: Client) -> dict[str, Any]:
    """The seed's ``/metrics`` JSON, with the daemon's own figures beside it."""
    m = c.metrics()
    jobs, total = m["jobs"], m["jobs_total"]
    done = jobs.get(JobState.COMPLETED, 0)
    return {
        "total_jobs": total,
        "completed_jobs": done,
        "pending_jobs": jobs.get(JobState.PENDING, 0),
        "failed_jobs": jobs.get(JobState.DEAD, 0),  # the seed counts the DLQ here
        "success_rate": f"{round(done / total * 100, 2) if total else 0.0}%",
        "active_workers": m["workers"]["running"],
        **m,
    }


def _dead_jobs(c: Client, i: Inputs) -> list[Any]:
    jobs, _ = c.list_jobs(JobState.DEAD, i.integer("limit", MAX_LIST_LIMIT))
    return jobs


def _seed_dlq_retry(c: Client, i: Inputs) -> dict[str, Any]:
    job = c.dlq_retry(_job_id(i))
    return {"status": "success", "message": f"DLQ job {job['id']} retried", "job": job}


def job_log(c: Client, job_id: str) -> str:
    """A job's whole log as text; 409 when no attempt has finished yet (the job exists,
    its log does not yet: 404 is kept for an unknown job)."""
    data = b"".join(c.logs(job_id))
    if not data:
        state = c.get_job(job_id)["state"]  # not_found for an unknown job
        raise Conflict(
            f"job {job_id} is {state}; no attempt has finished yet, so it has no log; "
            "ask again once it has run"
        )
    return data.decode("utf-8", "replace")


def _seed_log(c: Client, i: Inputs) -> dict[str, Any]:
    return {"job_id": _job_id(i), "log": job_log(c, _job_id(i))}


def _list_jobs(c: Client, i: Inputs) -> dict[str, Any]:
    jobs, total = c.list_jobs(
        i.query.get("state"),
        i.integer("limit", 100),
        i.integer("offset", 0),
        queue=i.query.get("queue"),
        since=i.number("since"),
        sort=i.query.get("sort", "oldest"),
    )
    return {"jobs": jobs, "total": total}


def _kill(c: Client, i: Inputs) -> dict[str, Any]:
    body = i.fields('{"signal": "TERM", "retry": false}', "signal", "retry")
    signal, retry = body.get("signal", "TERM"), body.get("retry", False)
    if not isinstance(signal, str) or not isinstance(retry, bool):
        raise InvalidRequest('send {"signal": "TERM", "retry": false} (a name and true/false)')
    return {"killing": c.kill(_job_id(i), signal=signal, retry=retry)}


def _queue(c: Client, i: Inputs) -> Any:
    name = i.path["name"]
    validate_queue_name(name)
    for queue in c.queues():
        if queue["name"] == name:
            return queue
    raise NotFound(f"no queue named {name!r} has jobs or settings")


def _set_queue(c: Client, i: Inputs) -> Any:
    body = i.fields('{"concurrency": 4, "rate": "10/s"}', "concurrency", "rate", "paused")
    concurrency, rate, paused = body.get("concurrency"), body.get("rate"), body.get("paused")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int)
    ):
        raise InvalidRequest('"concurrency" must be a whole number')
    if rate is not None and not isinstance(rate, str):
        raise InvalidRequest('"rate" must be a string such as "10/s"')
    if paused is not None and not isinstance(paused, bool):
        raise InvalidRequest('"paused" must be true or false')
    return c.set_queue(i.path["name"], concurrency=concurrency, rate=rate, paused=paused)


def _setting_value(i: Inputs) -> str:
    value = i.fields('{"value": "3"}', "value").get("value")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest('send {"value": ...} with a string or a number')
    return str(value)


# -- the table ---------------------------------------------------------------------

ID = "{id}"
OPERATIONS: tuple[Operation, ...] = (
    # The seed's endpoints, as its curl examples use them.
    Operation(
        "seedEnqueue", "POST", "/enqueue", "Enqueue a job (the seed's form)",
        _seed_enqueue, s.SEED_ENQUEUED, ok=201, body=s.NEW_JOB, refusals=(409,), tag="seed",
    ),
    Operation(
        "seedStartWorkers", "POST", "/workers/start", "Set how many jobs may run at once",
        _seed_workers_start, s.SEED_WORKERS, body=s.OPTIONAL_COUNT, body_required=False,
        refusals=(403,), tag="seed",
    ),
    Operation(
        "seedStopWorkers", "POST", "/workers/stop", "Stop the workers (running jobs finish)",
        _seed_workers_stop, s.SEED_WORKERS, refusals=(403,), tag="seed",
    ),
    Operation(
        "seedStatus", "GET", "/status", "Job counts per state and the workers",
        _seed_status, s.SEED_STATUS, tag="seed",
    ),
    Operation(
        "seedDlq", "GET", "/dlq", "The dead-letter queue",
        _dead_jobs, {"type": "array", "items": s.JOB}, query={"limit": s.LIST_QUERY["limit"]},
        tag="seed",
    ),
    Operation(
        "seedDlqRetry", "POST", f"/dlq/retry/{ID}", "Move a dead job back to pending",
        _seed_dlq_retry, s.SEED_RETRIED, refusals=(409,), tag="seed",
    ),
    Operation(
        "seedLogs", "GET", f"/logs/{ID}", "A job's output log",
        _seed_log, s.SEED_LOG, refusals=(409,), tag="seed",
    ),
    # Everything else, as resources.
    Operation(
        "listJobs", "GET", "/jobs", "Jobs in enqueue order, optionally of one state",
        _list_jobs, s.JOB_PAGE, query=s.LIST_QUERY,
    ),
    Operation(
        "createJob", "POST", "/jobs", "Enqueue a job", _enqueue, s.JOB, ok=201,
        body=s.NEW_JOB, refusals=(409,),
    ),
    Operation(
        "createJobs", "POST", "/jobs/batch", "Enqueue many jobs in one transaction (all or none)",
        _enqueue_batch, s.IDS, ok=201, body=s.BATCH, refusals=(409,),
    ),
    Operation(
        "getJob", "GET", f"/jobs/{ID}", "One job with its attempts",
        lambda c, i: c.get_job(_job_id(i)), s.JOB,
    ),
    Operation(
        "getJobAttempts", "GET", f"/jobs/{ID}/attempts", "A job's attempts",
        lambda c, i: c.get_job(_job_id(i))["history"], {"type": "array", "items": s.ATTEMPT},
    ),
    Operation(
        "getJobLog", "GET", f"/jobs/{ID}/log", "A job's output log",
        _seed_log, s.SEED_LOG, refusals=(409,),
    ),
    Operation(
        "retryJob", "POST", f"/jobs/{ID}/retry",
        "Run a finished job (completed, dead, cancelled) again, keeping its history",
        lambda c, i: c.retry(_job_id(i))[0], s.JOB, refusals=(403, 409),
    ),
    Operation(
        "cancelJob", "POST", f"/jobs/{ID}/cancel",
        "Cancel a job that has not started (pending, waiting, failed)",
        lambda c, i: c.cancel(_job_id(i))[0], s.JOB, refusals=(403, 409),
    ),
    Operation(
        "killJob", "POST", f"/jobs/{ID}/kill",
        "Signal a running job's process group (SIGKILL follows after the grace period)",
        _kill, s.KILLING, body=s.KILL, body_required=False, refusals=(403, 409),
    ),
    Operation(
        "listQueues", "GET", "/queues", "Every queue with jobs or settings",
        lambda c, i: c.queues(), {"type": "array", "items": s.QUEUE}, tag="queues",
    ),
    Operation(
        "getQueue", "GET", "/queues/{name}", "One queue: counts by state and settings",
        _queue, s.QUEUE, tag="queues",
    ),
    Operation(
        "setQueue", "PUT", "/queues/{name}",
        "Change a queue's concurrency, rate or pause (fields left out are kept)",
        _set_queue, s.QUEUE, body=s.QUEUE_SETTINGS, body_required=False,
        refusals=(403,), tag="queues",
    ),
    Operation(
        "pauseQueue", "POST", "/queues/{name}/pause",
        "Start nothing more from this queue (running jobs finish)",
        lambda c, i: c.pause_queue(i.path["name"]), s.QUEUE, refusals=(403,), tag="queues",
    ),
    Operation(
        "resumeQueue", "POST", "/queues/{name}/resume", "Start this queue's jobs again",
        lambda c, i: c.resume_queue(i.path["name"]), s.QUEUE, refusals=(403,), tag="queues",
    ),
    Operation(
        "listNodes", "GET", "/nodes",
        "Every daemon sharing the store (several hosts on PostgreSQL): live, gone or stopped",
        lambda c, i: c.nodes(), {"type": "array", "items": s.NODE}, tag="workers",
    ),
    Operation(
        "getWorkers", "GET", "/workers", "Workers desired, running and busy",
        lambda c, i: c.status()["workers"], s.WORKERS, tag="workers",
    ),
    Operation(
        "setWorkers", "PUT", "/workers", "Set how many jobs may run at once",
        lambda c, i: c.set_workers(_count(i, required=True)), s.WORKERS, body=s.COUNT,
        refusals=(403,), tag="workers",
    ),
    Operation(
        "listSettings", "GET", "/config", "Every queue setting with its default",
        lambda c, i: c.config_list(), {"type": "array", "items": s.SETTING}, tag="config",
    ),
    Operation(
        "getSetting", "GET", "/config/{key}", "One queue setting",
        lambda c, i: c.config_get(i.path["key"]), s.SETTING, tag="config",
    ),
    Operation(
        "setSetting", "PUT", "/config/{key}", "Change a queue setting (applies at once)",
        lambda c, i: c.config_set(i.path["key"], _setting_value(i)), s.SETTING,
        body=s.SETTING_VALUE, refusals=(403,), tag="config",
    ),
    Operation(
        "ping", "GET", "/health", "Whether the daemon answers",
        lambda c, i: c.ping(), s.PING, tag="service",
    ),
)  # fmt: skip
