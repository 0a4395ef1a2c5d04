"""One function per request type, chosen from one table: validate -> act -> reply.

Arguments arrive already parsed and validated by :func:`queuectl.protocol.parse_args`;
a handler raises a :class:`~queuectl.errors.QueuectlError` to refuse a request.

Handlers see the daemon only through :class:`HandlerContext`: the few parts a request
may use (the store's committer, the event bus, the dispatcher and supervisor, the
settings, the access policy), not the daemon's own wiring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from queuectl.errors import Conflict, InvalidRequest, NotFound, ShuttingDown
from queuectl.protocol import (
    ConfigKeyArgs,
    ConfigSetArgs,
    EnqueueArgs,
    EnqueueBatchArgs,
    JobIdArgs,
    JobIdsArgs,
    JobState,
    JobView,
    KillArgs,
    ListArgs,
    LogChunk,
    LogsArgs,
    NoArgs,
    NodeView,
    Op,
    PurgeArgs,
    PurgeView,
    QueueSetArgs,
    QueueView,
    ScheduleAddArgs,
    ScheduleNameArgs,
    ScheduleSetArgs,
    ScheduleView,
    SortKey,
    StatusView,
    WaitArgs,
    WaitedJob,
    WaitView,
    WatchArgs,
    WorkersArgs,
    WorkersView,
    signal_number,
)
from queuectld import __version__, joblog, limits, retention, scheduler, server
from queuectld.cgroup import Containment
from queuectld.config import QUEUE_SETTINGS, QueueSettings, setting_for
from queuectld.jobs import FINAL, Job, NewJob
from queuectld.queues import QueueLimits
from queuectld.store.base import JobFilter, NodeRow, ScheduleRow, Store

if TYPE_CHECKING:
    from queuectld.access import AccessPolicy
    from queuectld.committer import Committer
    from queuectld.config import DaemonConfig
    from queuectld.dispatcher import Dispatcher
    from queuectld.events import EventBus
    from queuectld.follow import OutputRelay
    from queuectld.scheduler import Scheduler
    from queuectld.supervisor import Supervisor


class HandlerContext(Protocol):
    """What request handlers may use of the daemon."""

    config: DaemonConfig
    committer: Committer
    events: EventBus
    dispatcher: Dispatcher
    scheduler: Scheduler
    supervisor: Supervisor
    access: AccessPolicy
    followers: OutputRelay  # who follows which job's output (`logs -f`)
    settings: dict[str, float | int]  # the queue settings (`config set` changes them)
    containment: Containment  # jobs' cgroups and the controllers delegated to them
    draining: bool
    started_monotonic: float

    @property
    def connections(self) -> int:
        """Control connections open now."""
        ...

    def request_stop(self) -> None:
        """Begin a graceful drain (as SIGTERM does)."""
        ...


log = structlog.get_logger("queuectld.handlers")

WORKERS_SETTING = "workers"
# See _remote_poll.
REMOTE_POLL_S = 1.0


def workers_setting(node_id: str) -> str:
    """The stored key of one daemon's worker count: each host of a cluster has its own
    (the bare ``workers`` key, from before clusters, is still read as a fallback)."""
    return f"{WORKERS_SETTING}@{node_id}"


def _new_job(d: HandlerContext, args: EnqueueArgs, now: float) -> NewJob:
    new = NewJob.from_args(args, now, server.caller_uid())
    # A limit the machine cannot enforce is refused, never silently ignored.
    asked = limits.Limits(new.memory, new.cpus, new.max_procs)
    if asked:
        # A root daemon runs each job as its submitter; any other runs them as itself.
        as_root = os.geteuid() == 0 and not new.owner_uid
        problem = limits.refusal(asked, as_root, d.containment.controllers)
        if problem is not None:
            raise InvalidRequest(problem)
    return new


def _view(d: HandlerContext, job: Job) -> JobView:
    return job.view(QueueSettings.from_values(d.settings))


async def ping(d: HandlerContext, args: NoArgs) -> dict[str, Any]:
    return {"pong": True, "version": __version__}


async def enqueue(d: HandlerContext, args: EnqueueArgs) -> JobView:
    now = time.time()
    new = _new_job(d, args, now)
    inserted = await d.committer.call(lambda s: s.insert_unique([new], now))
    job, existing = inserted.jobs[0], inserted.existing[0]
    if existing:
        d.access.check_job(server.caller(), job, job.id)
        return {**_view(d, job), "existing": True}
    _enqueued(d, [job])
    return _view(d, job)


async def enqueue_batch(d: HandlerContext, args: EnqueueBatchArgs) -> dict[str, Any]:
    now = time.time()
    news = [_new_job(d, a, now) for a in args.parsed()]
    inserted = await d.committer.call(lambda s: s.insert_unique(news, now))
    fresh = [j for j, old in zip(inserted.jobs, inserted.existing, strict=True) if not old]
    _enqueued(d, fresh)
    return {
        "count": len(fresh),
        "ids": [j.id for j in inserted.jobs],
        "existing": [j.id for j, old in zip(inserted.jobs, inserted.existing, strict=True) if old],
    }


def _enqueued(d: HandlerContext, jobs: list[Job]) -> None:
    if not jobs:
        return
    for job in jobs:
        d.events.enqueued(job)
        if job.state is JobState.WAITING:
            d.dispatcher.wake_at(job.run_at)
    d.dispatcher.wake()
    if len(jobs) == 1:
        log.info("job_enqueued", job_id=jobs[0].id, uid=server.caller_uid())
    else:
        log.info("jobs_enqueued", count=len(jobs), uid=server.caller_uid())


async def get_job(d: HandlerContext, args: JobIdArgs) -> JobView:
    job = await d.committer.call(lambda s: s.get_job(args.id, with_history=True))
    return _view(d, d.access.check_job(server.caller(), job, args.id))


async def list_jobs(d: HandlerContext, args: ListArgs) -> dict[str, Any]:
    where = JobFilter(
        state=JobState(args.state) if args.state else None,
        queue=args.queue,
        owner_uid=d.access.scope(server.caller()),
        since=args.since,
        sort=SortKey(args.sort),
    )

    def read(s: Store) -> tuple[list[Job], int]:
        jobs = s.find_jobs(where, args.limit, args.offset)
        children = [j.id for j in jobs if j.n_parents]
        if children:  # what each waits on (`list --blocked`)
            parents = s.parents_of(children)
            jobs = [dataclasses.replace(j, parents=parents.get(j.id, ())) for j in jobs]
        if where.queue is None and where.since is None:
            counts = s.count_by_state(where.owner_uid)  # kept by triggers: no count
            return jobs, counts[where.state] if where.state else sum(counts.values())
        return jobs, s.count_jobs(where)

    jobs, total = await d.committer.call(read)
    return {"jobs": [_view(d, j) for j in jobs], "total": total}


async def status(d: HandlerContext, args: NoArgs) -> StatusView:
    owner = d.access.scope(server.caller())

    def read(s: Store) -> tuple[dict[str, dict[JobState, int]], list[NodeRow]]:
        return s.count_by_queue(owner), s.nodes()

    by_queue, rows = await d.committer.call(read)
    counts = {state.value: 0 for state in JobState}
    for by_state in by_queue.values():
        for state, n in by_state.items():
            counts[state.value] += n
    return StatusView(
        counts=counts,
        queues={q: {k.value: n for k, n in c.items()} for q, c in sorted(by_queue.items())},
        workers=_workers(d),
        draining=d.draining,
        version=__version__,
        nodes=[_node_view(d, row) for row in rows],
    )


def _node_view(d: HandlerContext, row: NodeRow) -> NodeView:
    return NodeView(
        name=row.name,
        host=row.host,
        pid=row.pid,
        state=row.state(time.time(), d.config.node_timeout),
        slots=row.slots,
        running=row.running,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        socket=row.socket,
        this=row.name == d.config.node_id,
    )


async def nodes(d: HandlerContext, args: NoArgs) -> list[NodeView]:
    """Every daemon sharing the store: live, gone or stopped."""
    rows = await d.committer.call(lambda s: s.nodes())
    return [_node_view(d, row) for row in rows]


def _workers(d: HandlerContext) -> WorkersView:
    sup = d.supervisor
    return WorkersView(desired=sup.desired, running=sup.running, busy=sup.busy)


async def metrics(d: HandlerContext, args: NoArgs) -> dict[str, Any]:
    def read(s: Store) -> tuple[dict[JobState, int], dict[str, float]]:
        return s.count_by_state(), s.attempt_stats()

    counts, stats = await d.committer.call(read)
    return {
        "jobs": {k.value: v for k, v in counts.items()},
        "jobs_total": sum(counts.values()),
        "attempts": stats,
        "workers": _workers(d),
        "uptime_seconds": time.monotonic() - d.started_monotonic,
        "store_transactions": d.committer.transactions,
        "store_calls": d.committer.calls,
        "connections": d.connections,
    }


async def workers_set(d: HandlerContext, args: WorkersArgs) -> WorkersView:
    d.access.require_admin(server.caller(), "change the number of workers")
    key = workers_setting(d.config.node_id)
    await d.committer.call(lambda s: s.set_setting(key, str(args.count)))
    log.info("workers_set", desired=args.count, uid=server.caller_uid())
    await d.supervisor.scale(args.count)
    d.dispatcher.wake()
    return _workers(d)


async def workers_stop(d: HandlerContext, args: NoArgs) -> WorkersView:
    return await workers_set(d, WorkersArgs(count=0))


async def dlq_retry(d: HandlerContext, args: JobIdArgs) -> JobView:
    peer = server.caller()
    if d.access.scope(peer) is not None:
        owned = await d.committer.call(lambda s: s.get_job(args.id))
        d.access.check_job(peer, owned, args.id)
    job = await d.committer.call(lambda s: s.retry_dead(args.id, time.time()))
    _requeued(d, [job], "dlq_retry")
    return _view(d, job)


async def _owned(d: HandlerContext, ids: list[str]) -> None:
    """Refuse ids the caller may not act on (another user's job, for a non-admin)."""
    peer = server.caller()
    if d.access.scope(peer) is None:
        return
    jobs = await d.committer.call(lambda s: s.get_jobs(ids))
    for job_id in ids:
        d.access.check_job(peer, jobs.get(job_id), job_id)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


async def cancel(d: HandlerContext, args: JobIdsArgs) -> dict[str, Any]:
    """End jobs that have not started: all named jobs are cancelled, or none is."""
    ids = _unique(args.ids)
    await _owned(d, ids)
    reason = "cancelled by request"
    jobs = await d.committer.call(lambda s: s.cancel_jobs(ids, time.time(), reason))
    for job in jobs:  # the named jobs, then the dependents cancelled with them
        d.events.cancelled(job)
    log.info("jobs_cancelled", ids=ids, dependents=len(jobs) - len(ids), uid=server.caller_uid())
    d.dispatcher.wake()  # a job waiting on them with after_any may run now
    return {"jobs": [_view(d, j) for j in jobs]}


async def kill(d: HandlerContext, args: KillArgs) -> dict[str, Any]:
    """Signal running jobs; their attempts end ``killed`` (reported by the executors)."""
    ids = _unique(args.ids)
    await _owned(d, ids)
    jobs = await d.committer.call(lambda s: s.get_jobs(ids))
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        if job.state is not JobState.PROCESSING:
            raise Conflict(
                f"job {job_id!r} is {job.state.value}, not running; "
                + (
                    "use `queuectl cancel` for a job that has not started"
                    if job.state in (JobState.PENDING, JobState.WAITING, JobState.FAILED)
                    else "there is nothing to kill"
                )
            )
    absent = await d.dispatcher.kill(ids, signal_number(args.signal), args.retry)
    if absent:
        raise Conflict(
            f"job {absent[0]!r} is running on another daemon ({jobs[absent[0]].lease_owner}); "
            "kill it there"
        )
    log.info("jobs_killed", ids=ids, signal=args.signal, uid=server.caller_uid())
    return {"killing": ids, "signal": args.signal}


async def retry(d: HandlerContext, args: JobIdsArgs) -> dict[str, Any]:
    """Run finished jobs (completed, dead, cancelled) again, keeping their history."""
    ids = _unique(args.ids)
    await _owned(d, ids)
    jobs = await d.committer.call(lambda s: s.retry_jobs(ids, time.time()))
    _requeued(d, jobs, "retry")
    return {"jobs": [_view(d, j) for j in jobs]}


def _requeued(d: HandlerContext, jobs: list[Job], what: str) -> None:
    for job in jobs:
        log.info(what, job_id=job.id, uid=server.caller_uid())
        d.events.publish(
            "enqueued", id=job.id, command=job.command, queue=job.queue, owner_uid=job.owner_uid
        )
    d.dispatcher.wake()


async def queue_list(d: HandlerContext, args: NoArgs) -> list[QueueView]:
    owner = d.access.scope(server.caller())

    def read(s: Store) -> tuple[dict[str, QueueLimits], dict[str, dict[JobState, int]]]:
        return s.queue_limits(), s.count_by_queue(owner)

    limits, counts = await d.committer.call(read)
    names = sorted(set(limits) | set(counts) | {"default"})
    return [limits.get(n, QueueLimits(n)).view(counts.get(n, {})) for n in names]


async def queue_set(d: HandlerContext, args: QueueSetArgs) -> QueueView:
    d.access.require_admin(server.caller(), "change queue settings")

    def change(s: Store) -> tuple[QueueLimits, dict[JobState, int]]:
        old = s.queue_limits().get(args.name, QueueLimits(args.name))
        new = old.changed(args.concurrency, args.rate, args.paused)
        s.set_queue(new)
        return new, s.count_by_queue().get(args.name, {})

    limits, counts = await d.committer.call(change)
    log.info(
        "queue_set",
        queue=args.name,
        concurrency=limits.concurrency,
        rate=limits.rate,
        paused=limits.paused,
        uid=server.caller_uid(),
    )
    d.events.publish("queue", name=args.name, paused=limits.paused, owner_uid=None)
    d.dispatcher.queues_changed()
    return limits.view(counts)


async def logs(d: HandlerContext, args: LogsArgs) -> dict[str, Any]:
    job = await d.committer.call(lambda s: s.get_job(args.id))
    d.access.check_job(server.caller(), job, args.id)
    path = joblog.log_path(d.config.log_dir, args.id)
    chunk = joblog.read_chunk(path, args.offset, args.max_bytes)
    if chunk is not None:
        return dict(chunk)
    empty = LogChunk(path=str(path), data=b"", offset=args.offset, size=0)
    elsewhere = await _ran_elsewhere(d, args.id)
    return {**empty, **(elsewhere or {})}


async def _ran_elsewhere(d: HandlerContext, job_id: str) -> dict[str, str] | None:
    """Where another daemon of the cluster runs (or last ran) the job, whose log is on
    its host: ``node`` and, while it is registered, its ``host`` and ``socket``."""

    def read(s: Store) -> tuple[Job | None, list[NodeRow]]:
        return s.get_job(job_id, with_history=True), s.nodes()

    job, rows = await d.committer.call(read)
    if job is None:
        return None
    ran_on = job.lease_owner or next(
        (a.node for a in reversed(job.history) if a.node is not None), None
    )
    if ran_on is None or ran_on == d.config.node_id:
        return None
    node = next((n for n in rows if n.name == ran_on), None)
    if node is None:
        return {"node": ran_on}
    return {"node": ran_on, "host": node.host, "socket": node.socket}


def _remote_poll(d: HandlerContext) -> float | None:
    """How often `wait` and `logs -f` look at the store themselves: jobs of a shared
    store may end on another daemon, whose events this one never sees."""
    return REMOTE_POLL_S if d.config.uses_postgres else None


async def purge(d: HandlerContext, args: PurgeArgs) -> PurgeView:
    """Remove finished jobs older than ``older_than`` with their log files."""
    d.access.require_admin(server.caller(), "purge jobs")
    before = time.time() - args.older_than
    done = await retention.purge(
        d.committer, d.config.log_dir, JobState(args.state), before, args.queue, args.dry_run
    )
    log.info("jobs_purged", state=args.state, **done, uid=server.caller_uid())
    return done


async def vacuum(d: HandlerContext, args: NoArgs) -> dict[str, Any]:
    """Rebuild the store to its smallest size (every other store call waits)."""
    d.access.require_admin(server.caller(), "compact the queue database")
    before = await d.committer.call(lambda s: s.size_bytes())
    started = time.monotonic()
    await d.committer.call_outside(lambda s: s.compact())
    after = await d.committer.call(lambda s: s.size_bytes())
    took = time.monotonic() - started
    log.info("store_compacted", bytes_before=before, bytes_after=after, seconds=round(took, 3))
    return {"bytes_before": before, "bytes_after": after, "seconds": took}


# -- schedules --------------------------------------------------------------------


async def _schedule_view(d: HandlerContext, name: str) -> ScheduleView:
    def read(s: Store) -> tuple[ScheduleRow | None, Job | None]:
        row = s.get_schedule(name)
        last = s.get_job(row.last_job) if row is not None and row.last_job else None
        return row, last

    owner = d.access.scope(server.caller())
    row, last = await d.committer.call(read)
    return scheduler.view(_owned_schedule(owner, row, name), last.state.value if last else None)


async def schedule_add(d: HandlerContext, args: ScheduleAddArgs) -> ScheduleView:
    """Add (or with ``replace`` change) a schedule; its first tick is the next one."""
    scheduler.check_cron(args.cron)
    scheduler.zone(args.tz)
    now = time.time()
    row = ScheduleRow(
        name=args.name,
        cron=args.cron,
        tz=args.tz,
        job=json.dumps(args.job, sort_keys=True),
        overlap=args.overlap,
        catch_up=args.catch_up,
        paused=False,
        owner_uid=server.caller_uid(),
        created_at=now,
        next_at=scheduler.next_tick(args.cron, args.tz, now),
    )

    owner = d.access.scope(server.caller())

    def put(s: Store) -> None:
        if args.replace:
            _owned_schedule(owner, s.get_schedule(args.name), args.name)
        s.put_schedule(row, args.replace)

    await d.committer.call(put)
    log.info("schedule_added", name=args.name, cron=args.cron, uid=server.caller_uid())
    d.scheduler.poke()
    return await _schedule_view(d, args.name)


def _owned_schedule(owner: int | None, row: ScheduleRow | None, name: str) -> ScheduleRow:
    """The schedule, if it exists and belongs to ``owner`` (None: the caller sees all).

    ``owner`` is worked out on the event loop: the caller is not known on the store thread.
    """
    if row is None or (owner is not None and row.owner_uid != owner):
        raise NotFound(f"no schedule named {name!r}; `queuectl schedule list` shows them")
    return row


async def schedule_list(d: HandlerContext, args: NoArgs) -> list[ScheduleView]:
    owner = d.access.scope(server.caller())

    def read(s: Store) -> tuple[list[ScheduleRow], dict[str, Job]]:
        rows = [r for r in s.schedules() if owner is None or r.owner_uid == owner]
        return rows, s.get_jobs([r.last_job for r in rows if r.last_job])

    rows, last = await d.committer.call(read)
    return [
        scheduler.view(r, last[r.last_job].state.value if r.last_job in last else None)
        for r in rows
    ]


async def schedule_get(d: HandlerContext, args: ScheduleNameArgs) -> ScheduleView:
    return await _schedule_view(d, args.name)


async def schedule_set(d: HandlerContext, args: ScheduleSetArgs) -> ScheduleView:
    """Pause or resume: a resumed schedule goes on from its next tick (none is caught up)."""

    owner = d.access.scope(server.caller())

    def change(s: Store) -> None:
        row = _owned_schedule(owner, s.get_schedule(args.name), args.name)
        next_at = row.next_at
        if not args.paused and row.paused:
            next_at = scheduler.next_tick(row.cron, row.tz, time.time())
        s.set_schedule_paused(args.name, args.paused, next_at)

    await d.committer.call(change)
    log.info("schedule_paused" if args.paused else "schedule_resumed", name=args.name)
    d.scheduler.poke()
    return await _schedule_view(d, args.name)


async def schedule_remove(d: HandlerContext, args: ScheduleNameArgs) -> dict[str, Any]:
    """Remove a schedule; the jobs it made stay."""

    owner = d.access.scope(server.caller())

    def remove(s: Store) -> None:
        _owned_schedule(owner, s.get_schedule(args.name), args.name)
        s.delete_schedule(args.name)

    await d.committer.call(remove)
    log.info("schedule_removed", name=args.name, uid=server.caller_uid())
    d.scheduler.poke()
    return {"removed": args.name}


async def schedule_run(d: HandlerContext, args: ScheduleNameArgs) -> JobView:
    """Make one job of the schedule now (its ticks are not changed)."""
    owner = d.access.scope(server.caller())
    row = await d.committer.call(lambda s: s.get_schedule(args.name))
    job = await d.scheduler.run_now(_owned_schedule(owner, row, args.name))
    return _view(d, job)


def _setting_view(d: HandlerContext, key: str) -> dict[str, Any]:
    setting = QUEUE_SETTINGS[key]
    return {"key": key, "value": d.settings[key], "default": setting.default, "help": setting.help}


async def config_get(d: HandlerContext, args: ConfigKeyArgs) -> dict[str, Any]:
    return _setting_view(d, setting_for(args.key).key)


async def config_set(d: HandlerContext, args: ConfigSetArgs) -> dict[str, Any]:
    setting = setting_for(args.key)
    value = setting.check(args.value)
    d.access.require_admin(server.caller(), "change queue settings")
    await d.committer.call(lambda s: s.set_setting(setting.key, str(value)))
    d.settings[setting.key] = value
    log.info("config_set", key=setting.key, value=value, uid=server.caller_uid())
    d.dispatcher.wake()
    return _setting_view(d, setting.key)


async def config_list(d: HandlerContext, args: NoArgs) -> list[dict[str, Any]]:
    return [_setting_view(d, key) for key in QUEUE_SETTINGS]


async def shutdown(d: HandlerContext, args: NoArgs) -> dict[str, Any]:
    d.access.require_admin(server.caller(), "stop the daemon")
    log.info("shutdown_requested", uid=server.caller_uid())
    d.request_stop()
    return {"stopping": True}


FINISHED_EVENTS = frozenset({"completed", "failed", "dead", "pending", "cancelled"})


def _drain_queue(queue: asyncio.Queue[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
    """The events already waiting in a subscriber's queue, without waiting for more."""
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def watch(d: HandlerContext, args: WatchArgs) -> AsyncIterator[dict[str, Any]]:
    """Job events as they happen; with ``until_idle``, end once nothing is left to run."""
    queue = d.events.subscribe()
    owner = d.access.scope(server.caller())

    def look(store: Store) -> dict[str, Any] | None:
        """The idle event, or None while a job runs, is due, waits for a retry or for its
        parents.

        Jobs waiting for a later time (``--delay``, ``--at``) do not hold the watch:
        the event says how many wait and, for a watcher who sees every job, when the
        first is due. A retry is part of the run in progress (its outcome, a DLQ move
        say, is what a follower waits to see).
        """
        counts = store.count_by_state(owner)
        busy = (JobState.PROCESSING, JobState.PENDING, JobState.FAILED, JobState.BLOCKED)
        if any(counts[state] for state in busy):  # blocked: part of a pipeline under way
            return None
        scheduled = counts[JobState.WAITING]
        # next_timed_at covers every owner's jobs: only a watcher who sees them all gets it.
        next_at = store.next_timed_at() if scheduled and owner is None else None
        return {"type": "idle", "time": time.time(), "scheduled": scheduled, "next_at": next_at}

    async def idle() -> dict[str, Any] | None:
        return await d.committer.call(look)

    def visible(event: dict[str, Any]) -> bool:
        return owner is None or event.get("owner_uid") == owner

    try:
        if args.until_idle and (done := await idle()) is not None:
            yield done
            return
        while True:
            finished = False
            for event in [await queue.get(), *_drain_queue(queue)]:
                if event is None:
                    # The bus closes when the daemon stops: say so, so that watchers
                    # end cleanly instead of finding the connection closed.
                    yield {"type": "stopped", "time": time.time()}
                    return
                if visible(event):
                    yield event
                finished = finished or event["type"] in FINISHED_EVENTS
            if args.until_idle and finished and (done := await idle()) is not None:
                # Outcomes committed before the count was taken are announced by now:
                # they come before `idle`, not lost after it.
                for event in _drain_queue(queue):
                    if event is not None and visible(event):
                        yield event
                yield done
                return
    finally:
        d.events.unsubscribe(queue)


# Events saying a job reached a final state (the recorder names them after the state).
FINAL_EVENTS = frozenset(state.value for state in FINAL)
FOLLOW_LOG_CHUNK = 1024 * 1024


def _final_ids(batch: list[dict[str, Any] | None], ids: set[str]) -> set[str]:
    """The jobs of ``ids`` that a batch of events says reached a final state."""
    return {
        e["id"] for e in batch if e is not None and e["type"] in FINAL_EVENTS and e.get("id") in ids
    }


def _bus_closed(d: HandlerContext, what: str) -> None:
    """A ``None`` from the event bus: the daemon stops (say so), or this reader fell
    more than the bus's backlog behind and was dropped (the caller subscribes again)."""
    if d.draining:
        raise ShuttingDown(f"queuectld stopped before {what}; ask again once it is back")


async def _read_jobs(d: HandlerContext, ids: list[str]) -> dict[str, Job]:
    peer = server.caller()
    found = await d.committer.call(lambda s: [s.get_job(job_id) for job_id in ids])
    pairs = zip(ids, found, strict=True)
    return {job_id: d.access.check_job(peer, job, job_id) for job_id, job in pairs}


def _waited(job: Job) -> WaitedJob:
    return WaitedJob(
        id=job.id,
        state=job.state.value,
        final=job.state in FINAL,
        last_exit_code=job.last_exit_code,
        last_error=job.last_error,
    )


async def wait(d: HandlerContext, args: WaitArgs) -> WaitView:
    """Answer once every job is final, or when the timeout passes, with where each stands."""
    ids = list(dict.fromkeys(args.ids))
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    # Subscribed before the states are read: a job that ends in between is announced.
    queue = d.events.subscribe()
    try:
        jobs = await _read_jobs(d, ids)
        while True:
            left = {job_id for job_id in ids if jobs[job_id].state not in FINAL}
            timed_out = bool(left) and deadline is not None and time.monotonic() >= deadline
            if not left or timed_out:
                return WaitView(jobs=[_waited(jobs[job_id]) for job_id in ids], timed_out=timed_out)
            pause = _remote_poll(d)
            if deadline is not None:
                left_s = deadline - time.monotonic()
                pause = left_s if pause is None else min(pause, left_s)
            try:
                first = await asyncio.wait_for(queue.get(), pause)
            except TimeoutError:
                # The deadline has passed (answer with what stands), or it is time to
                # look for jobs another daemon of the cluster ended.
                jobs.update(await _read_jobs(d, sorted(left)))
                continue
            batch = [first, *_drain_queue(queue)]
            changed = _final_ids(batch, left)
            if None in batch:
                _bus_closed(d, "the jobs ended")
                d.events.unsubscribe(queue)
                queue = d.events.subscribe()
                changed = left
            if changed:
                jobs.update(await _read_jobs(d, sorted(changed)))
    finally:
        d.events.unsubscribe(queue)


async def follow_logs(d: HandlerContext, args: JobIdArgs) -> AsyncIterator[dict[str, Any]]:
    """A job's output as it is written, until the job is final (``logs -f``).

    Events: ``{"type": "output", "stream": "stdout" | "stderr" | "log", "data": bytes}``.
    A job already final sends its log (``stream`` ``log``); so does one that ended
    before any of its output could be forwarded (it printed nothing, or it ended as
    the follower joined): the log blocks written meanwhile.
    """
    job_id = args.id
    path = joblog.log_path(d.config.log_dir, job_id)
    queue = d.events.subscribe()
    follower = d.followers.subscribe(job_id)
    getting: asyncio.Future[dict[str, Any] | None] | None = None
    try:
        job = (await _read_jobs(d, [job_id]))[job_id]
        log_from = 0
        if _runs_elsewhere(d, job):
            yield await _elsewhere_event(d, job_id)
            return
        if job.state not in FINAL:
            log_from = _log_size(path)
            d.supervisor.follow(job_id, True)
            getting = asyncio.ensure_future(queue.get())
            while True:
                for stream, data in follower.take():
                    yield {"type": "output", "stream": stream, "data": data}
                if not getting.done():
                    woken = asyncio.ensure_future(follower.changed.wait())
                    done, _ = await asyncio.wait(
                        {getting, woken},
                        timeout=_remote_poll(d),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    woken.cancel()
                    if not done:  # a shared store: did another daemon take the job?
                        job = (await _read_jobs(d, [job_id]))[job_id]
                        if _runs_elsewhere(d, job) or job.state in FINAL:
                            break
                    continue
                batch = [getting.result(), *_drain_queue(queue)]
                ended = bool(_final_ids(batch, {job_id}))
                if None in batch:
                    _bus_closed(d, f"job {job_id!r} ended")
                    d.events.unsubscribe(queue)
                    queue = d.events.subscribe()
                    job = (await _read_jobs(d, [job_id]))[job_id]
                    ended = job.state in FINAL
                if ended:
                    break
                getting = asyncio.ensure_future(queue.get())
            # An attempt's output comes before its outcome, so all of it is here by now.
            for stream, data in follower.take():
                yield {"type": "output", "stream": stream, "data": data}
        if follower.sent == 0:
            offset = log_from
            while chunk := joblog.read_chunk(path, offset, FOLLOW_LOG_CHUNK):
                if not chunk["data"]:
                    break
                yield {"type": "output", "stream": "log", "data": chunk["data"]}
                offset += len(chunk["data"])
            if offset == log_from and (elsewhere := await _ran_elsewhere(d, job_id)):
                # Nothing here: another daemon of the cluster ran it (or runs it now).
                yield {"type": "elsewhere", **elsewhere}
    finally:
        if getting is not None:
            getting.cancel()
        d.events.unsubscribe(queue)
        if d.followers.unsubscribe(follower):
            d.supervisor.follow(job_id, False)


def _runs_elsewhere(d: HandlerContext, job: Job) -> bool:
    """True when another daemon of the cluster runs the job now."""
    owner = job.lease_owner
    return job.state is JobState.PROCESSING and owner is not None and owner != d.config.node_id


async def _elsewhere_event(d: HandlerContext, job_id: str) -> dict[str, Any]:
    return {"type": "elsewhere", **(await _ran_elsewhere(d, job_id) or {})}


def _log_size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


Handler = Callable[[HandlerContext, Any], Awaitable[Any]]
Stream = Callable[[HandlerContext, Any], AsyncIterator[dict[str, Any]]]

# What a draining daemon still answers: how it is doing. Everything else is refused,
# changing nothing; a second `shutdown` too (a script that says it twice must not stop
# the running jobs: a second SIGTERM does that).
ANSWERED_WHILE_DRAINING = frozenset({Op.PING, Op.STATUS})


def _refuse_if_draining(d: HandlerContext) -> None:
    if d.draining:
        busy = _workers(d)["busy"]
        running = f"; {busy} job{'' if busy == 1 else 's'} still running" if busy else ""
        log.info("request_refused", reason="draining", uid=server.caller_uid())
        raise ShuttingDown(f"queuectld is shutting down{running}")


def _unless_draining(handler: Handler) -> Handler:
    async def guarded(d: HandlerContext, args: Any) -> Any:
        _refuse_if_draining(d)
        return await handler(d, args)

    return guarded


def _stream_unless_draining(stream: Stream) -> Stream:
    async def guarded(d: HandlerContext, args: Any) -> AsyncIterator[dict[str, Any]]:
        _refuse_if_draining(d)
        async for event in stream(d, args):
            yield event

    return guarded


HANDLERS: dict[Op, Handler] = {
    Op.PING: ping,
    Op.ENQUEUE: enqueue,
    Op.ENQUEUE_BATCH: enqueue_batch,
    Op.GET_JOB: get_job,
    Op.LIST_JOBS: list_jobs,
    Op.STATUS: status,
    Op.METRICS: metrics,
    Op.WORKERS_SET: workers_set,
    Op.WORKERS_STOP: workers_stop,
    Op.DLQ_RETRY: dlq_retry,
    Op.CANCEL: cancel,
    Op.KILL: kill,
    Op.RETRY: retry,
    Op.PURGE: purge,
    Op.VACUUM: vacuum,
    Op.SCHEDULE_ADD: schedule_add,
    Op.SCHEDULE_LIST: schedule_list,
    Op.SCHEDULE_GET: schedule_get,
    Op.SCHEDULE_SET: schedule_set,
    Op.SCHEDULE_REMOVE: schedule_remove,
    Op.SCHEDULE_RUN: schedule_run,
    Op.QUEUE_LIST: queue_list,
    Op.QUEUE_SET: queue_set,
    Op.LOGS: logs,
    Op.CONFIG_GET: config_get,
    Op.CONFIG_SET: config_set,
    Op.CONFIG_LIST: config_list,
    Op.WAIT: wait,
    Op.NODES: nodes,
    Op.SHUTDOWN: shutdown,
}
# Requests that only read and wait: nothing is left half-done when their client hangs
# up, so they end with the connection (others are carried through).
ENDED_WITH_CONNECTION = frozenset({Op.WAIT})
HANDLERS = {
    op: handler if op in ANSWERED_WHILE_DRAINING else _unless_draining(handler)
    for op, handler in HANDLERS.items()
}
STREAMS: dict[Op, Stream] = {
    Op.WATCH: _stream_unless_draining(watch),
    Op.FOLLOW_LOGS: _stream_unless_draining(follow_logs),
}
