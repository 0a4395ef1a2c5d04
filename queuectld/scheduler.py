"""Recurring schedules: each tick of a cron expression enqueues one job, exactly once.

Cron parsing and the next/previous tick come from croniter (five fields, or six with
seconds last: ``* * * * * */1``), in the schedule's time zone (``zoneinfo``), so
daylight-saving changes fall where a wall clock puts them.

**Exactly once per tick.** A tick's job has an id made of the schedule's name and the
tick's UTC time (``backup.20261201T090000``), and it is stored in the same transaction
that moves the schedule's ``next_at`` past the tick. A daemon killed at the tick either
committed both (the tick is done) or neither (the restart handles the tick again, and
the id would refuse a second job anyway).

**Catch-up** (:func:`ticks_due`), for ticks that passed while the daemon was down (before
it started): ``latest`` makes one run for all of them, ``all`` one per tick (at most
:data:`~queuectl.protocol.MAX_CATCHUP_RUNS`, the latest ones), ``none`` none. Ticks
after the start always run.

**Overlap** (:func:`overlap_action`), when the schedule's previous job is not final at a
tick: ``skip`` makes no job, ``queue`` makes one that waits for the previous one
(``after_any``), ``replace`` cancels the previous one (or kills it, when it runs) and
makes one that waits for it to end.

The :class:`Scheduler` keeps one timer, for the earliest ``next_at``; nothing polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import signal
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from croniter import croniter

from queuectl.errors import Conflict, InvalidRequest, QueuectlError
from queuectl.protocol import (
    FINAL_STATES,
    MAX_CATCHUP_RUNS,
    CatchUp,
    EnqueueArgs,
    JobState,
    Overlap,
    ScheduleView,
    parse_args,
)
from queuectld.committer import Committer
from queuectld.events import EventBus
from queuectld.jobs import CANCELLABLE, Job, NewJob
from queuectld.store.base import ScheduleRow, Store

log = structlog.get_logger("queuectld.scheduler")

# A timer may fire a little early by the wall clock (the loop keeps monotonic time).
TIMER_SLACK_S = 0.002


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The time zone ``name`` (``UTC``, ``Europe/Berlin``); InvalidRequest if unknown."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"unknown time zone {name!r}; use a name such as UTC or Europe/Berlin"
        ) from None


def check_cron(expr: str) -> None:
    """Refuse what croniter cannot read (five fields, or six with seconds last)."""
    if len(expr.split()) not in (5, 6) or not croniter.is_valid(expr):
        raise InvalidRequest(
            f"{expr!r} is not a cron expression; use five fields (minute hour day month "
            "weekday: '*/5 * * * *') or six with seconds last ('* * * * * */10')"
        )


def _iter(cron: str, tz: str, at: float) -> croniter:
    return croniter(cron, dt.datetime.fromtimestamp(at, zone(tz)))


def next_tick(cron: str, tz: str, after: float) -> float:
    """The first tick strictly after Unix time ``after``."""
    return float(_iter(cron, tz, after).get_next(float))


def tick_id(name: str, tick: float) -> str:
    """The id of the job a schedule makes at ``tick``: ``NAME.YYYYMMDDTHHMMSS`` (UTC)."""
    return f"{name}.{dt.datetime.fromtimestamp(tick, dt.UTC):%Y%m%dT%H%M%S}"


def ticks_due(
    cron: str, tz: str, next_at: float, now: float, started: float, catch_up: CatchUp
) -> list[float]:
    """The ticks from ``next_at`` to ``now`` (inclusive) that make a job, oldest first.

    Ticks before ``started`` (the daemon's start) were missed: ``all`` keeps each,
    ``latest`` the last one, ``none`` none of them.
    """
    if next_at > now:
        return []
    # Backwards from now: a long downtime costs one step unless every tick is wanted.
    it = _iter(cron, tz, now + 0.001)
    found: list[float] = []
    while len(found) < MAX_CATCHUP_RUNS:
        tick = float(it.get_prev(float))
        if tick < next_at:
            break
        found.append(tick)
        if tick < started and catch_up is not CatchUp.ALL:
            break  # the latest missed tick is all `latest` needs
    found.reverse()
    missed = [t for t in found if t < started]
    current = [t for t in found if t >= started]
    if catch_up is CatchUp.LATEST:
        return missed[-1:] + current
    if catch_up is CatchUp.NONE:
        return current
    return found


class Action(enum.Enum):
    """What a tick does, given the schedule's previous job."""

    RUN = "run"  # enqueue a job
    SKIP = "skip"  # enqueue nothing
    QUEUE = "queue"  # enqueue a job that waits for the previous one
    REPLACE = "replace"  # stop the previous one; enqueue a job that waits for it to end


def overlap_action(overlap: Overlap, previous: JobState | None) -> Action:
    """The tick's action: a previous job that is gone or final never stands in the way."""
    if previous is None or previous in FINAL_STATES:
        return Action.RUN
    return {Overlap.SKIP: Action.SKIP, Overlap.QUEUE: Action.QUEUE}.get(overlap, Action.REPLACE)


def tick_job(row: ScheduleRow, job_id: str, after_any: tuple[str, ...], now: float) -> NewJob:
    """The job a schedule makes, as its stored request says."""
    args = parse_args(EnqueueArgs, json.loads(row.job), "the schedule's job")
    return NewJob.from_args(args, now, row.owner_uid, job_id=job_id, after_any=after_any)


@dataclass
class Fired:
    """What one pass over the schedules did (on the store thread)."""

    jobs: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)  # running jobs `replace` stops
    next_at: float | None = None  # the earliest next tick of any active schedule


def fire(store: Store, row: ScheduleRow, tick: float | None, now: float, out: Fired) -> str | None:
    """Make the job of one tick (``tick`` None: `schedule run`, by hand, now) under the
    overlap policy; its id, or None when it made none."""
    previous = store.get_job(row.last_job) if row.last_job else None
    if tick is None:
        action = Action.RUN  # asked for by a user: no overlap policy
        job_id = f"{row.name}.run-{dt.datetime.fromtimestamp(now, dt.UTC):%Y%m%dT%H%M%S%f}"
    else:
        action = overlap_action(Overlap(row.overlap), previous.state if previous else None)
        job_id = tick_id(row.name, tick)
    if action is Action.SKIP:
        assert previous is not None
        log.info("schedule_tick_skipped", schedule=row.name, tick=tick, running=previous.id)
        return None
    after_any: tuple[str, ...] = ()
    if previous is not None and action in (Action.QUEUE, Action.REPLACE):
        after_any = (previous.id,)
    if previous is not None and action is Action.REPLACE:
        if previous.state in CANCELLABLE:
            reason = f"replaced by the next run of schedule {row.name!r}"
            out.cancelled += store.cancel_jobs([previous.id], now, reason)
        elif previous.state is JobState.PROCESSING:
            out.kill.append(previous.id)
    try:
        with store.savepoint():
            (job,) = store.insert_jobs([tick_job(row, job_id, after_any, now)], now)
    except Conflict:
        # The tick's job exists: it was made before (the id says which tick).
        log.warning("schedule_tick_already_fired", schedule=row.name, job_id=job_id)
        return None
    out.jobs.append(job)
    return job.id


def fire_due(store: Store, now: float, started: float) -> Fired:
    """Every schedule's due ticks: their jobs, and each schedule's progress, together."""
    out = Fired()
    for row in store.schedules():
        if row.paused:
            continue
        if row.next_at <= now:
            last_at, last_job = None, None
            for tick in ticks_due(
                row.cron, row.tz, row.next_at, now, started, CatchUp(row.catch_up)
            ):
                made = fire(store, row, tick, now, out)
                if made is not None:
                    last_at, last_job = tick, made
                    row = dataclasses.replace(row, last_job=made)
            next_at = next_tick(row.cron, row.tz, now)
            store.schedule_progress(row.name, next_at, last_at, last_job)
        else:
            next_at = row.next_at
        out.next_at = next_at if out.next_at is None else min(out.next_at, next_at)
    return out


def view(row: ScheduleRow, last_state: str | None) -> ScheduleView:
    """A schedule as clients see it."""
    return ScheduleView(
        name=row.name,
        cron=row.cron,
        tz=row.tz,
        job=json.loads(row.job),
        overlap=row.overlap,
        catch_up=row.catch_up,
        paused=row.paused,
        created_at=row.created_at,
        next_at=None if row.paused else row.next_at,
        last_at=row.last_at,
        last_job=row.last_job,
        last_state=last_state,
    )


class Scheduler:
    """Fires due ticks from one timer set for the earliest next tick."""

    def __init__(
        self,
        committer: Committer,
        events: EventBus,
        wake_dispatcher: Callable[[], None],
        kill: Callable[[list[str], int, bool], Awaitable[list[str]]],
    ) -> None:
        self._committer = committer
        self._events = events
        self._wake_dispatcher = wake_dispatcher
        self._kill = kill
        self.started = time.time()
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        """Handle the ticks due now (catch-up included) and set the timer."""
        # Ticks before this time were missed (the catch-up policy decides about them).
        log.info("scheduler_started", started=self.started)
        self.poke()

    def poke(self) -> None:
        """Schedules changed (or a timer fired): look at them again soon."""
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._check(), name="scheduler")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """No more ticks (the daemon drains)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_now(self, row: ScheduleRow) -> Job:
        """`schedule run`: one job of the schedule now, outside its ticks."""

        def work(store: Store) -> Fired:
            out = Fired()
            made = fire(store, row, None, time.time(), out)
            if made is not None:
                store.schedule_progress(row.name, row.next_at, None, made)
            return out

        fired = await self._committer.call(work)
        self._announce(fired)
        return fired.jobs[0]

    async def _check(self) -> None:
        async with self._lock:
            if self._closed:
                return
            started = self.started
            try:
                fired = await self._committer.call(lambda s: fire_due(s, time.time(), started))
            except QueuectlError as exc:
                log.error("schedules_not_fired", error=str(exc))
                self._arm(time.time() + 5.0)  # the store is in trouble: try again soon
                return
            self._announce(fired)
            if fired.kill:
                await self._kill(fired.kill, signal.SIGTERM, False)
            if fired.next_at is not None:
                self._arm(fired.next_at)
            elif self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, when - time.time() + TIMER_SLACK_S)
        self._timer = asyncio.get_running_loop().call_later(delay, self.poke)

    def _announce(self, fired: Fired) -> None:
        for job in fired.cancelled:
            self._events.cancelled(job)
        for job in fired.jobs:
            log.info("schedule_fired", job_id=job.id, state=job.state.value)
            self._events.enqueued(job)
        if fired.jobs or fired.cancelled:
            self._wake_dispatcher()
