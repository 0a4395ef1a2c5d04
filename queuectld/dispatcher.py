"""Claim due jobs, hand them to free executor slots, and wake up at the right time.

Nothing here sleeps in a loop: an enqueue, a finished job or a free slot calls
:meth:`Dispatcher.wake`; the next due retry or delayed job sets one timer; a slow
safety tick is only a backstop (and the place where hung executors are caught).

Throughput comes from doing the store work of many jobs at once, off the jobs' path.
One *cycle* records every outcome gathered since the last one (:mod:`queuectld.recorder`)
and claims jobs for the free slots, in a single store call (one transaction, one sync).
When jobs are short and plentiful the dispatcher also claims a few ahead (the *ready*
list, about :data:`PREFETCH_HORIZON_S` of work) and sends some to wait behind running
jobs on the executors, so that a slot never waits for the daemon between two short
jobs; outcomes then wait up to :data:`RECORD_DELAY_S` to share a commit. A job claimed
ahead is claimed like any other (``processing``, leased to this node), so a crash
returns it to the queue through recovery; a drain, a scale to zero or a wait longer
than :data:`READY_MAX_AGE_S` gives it back unstarted, as if it had never been claimed.
Jobs that must not run twice (``idempotent`` false) are never claimed ahead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from queuectl.errors import QueuectlError, StoreUnavailable
from queuectld import limits, procs
from queuectld.cgroup import attempt_path
from queuectld.committer import Committer
from queuectld.config import DaemonConfig, QueueSettings
from queuectld.events import EventBus
from queuectld.execproto import JobFinished, RunJob
from queuectld.jobs import Claim, Job
from queuectld.recorder import Recorder
from queuectld.recovery import rescue_expired_leases, rescue_lost_claims
from queuectld.store.base import Finished, Settled, Store
from queuectld.supervisor import Supervisor, SupervisorEvents

log = structlog.get_logger("queuectld.dispatcher")

# Claim ahead about this much work (by the recent average run time), at most
# PREFETCH_MAX_PER_SLOT jobs a slot and PREFETCH_MAX in all; longer jobs never are.
PREFETCH_HORIZON_S = 0.05
PREFETCH_MAX_PER_SLOT = 64
PREFETCH_MAX = 1024
# A job claimed ahead that has not reached an executor after this long is given back.
READY_MAX_AGE_S = 1.0
# While every slot has work, outcomes wait at most this long to share one commit.
RECORD_DELAY_S = 0.005
MAX_RECORD_BATCH = 1024
# Weight of the newest run time in the running average that sizes the ready list.
RUN_AVG_WEIGHT = 0.2
CLOSE_TIMEOUT_S = 30.0


class Mode(enum.StrEnum):
    """What the dispatcher may do now."""

    RUNNING = "running"  # claim for free slots
    NO_SLOTS = "no_slots"  # the worker count is 0: claim nothing, give back what is held
    DRAINING = "draining"  # stopping: claim nothing, give back what is held ahead
    CLOSING = "closing"  # the last cycles: record what is left, then stop


@dataclass
class _Ready:
    """A job claimed ahead of the slots."""

    claim: Claim
    since: float  # monotonic time of the claim


class Dispatcher:
    """Moves jobs from the store to the executors; hands their outcomes to the recorder."""

    def __init__(
        self,
        committer: Committer,
        events: EventBus,
        config: DaemonConfig,
        settings: Callable[[], QueueSettings],
        make_supervisor: Callable[[SupervisorEvents], Supervisor],
        slots_changed: Callable[[], None] = lambda: None,
        cgroups: str | None = None,
        controllers: frozenset[str] = frozenset(),
    ) -> None:
        self.committer = committer
        self.cgroups = cgroups  # the queue's directory of attempt cgroups (None: none)
        self.controllers = controllers if cgroups else frozenset()  # delegated to them
        self.events = events
        self.config = config
        self._settings = settings
        self.owner = config.node_id
        self._slots_changed = slots_changed  # executors became ready or exited
        # A root daemon serves several users: each job runs as the user who submitted it.
        self.run_as_owner = os.geteuid() == 0
        self.recorder = Recorder(committer, events, settings, self.wake, self.wake_at)
        self.supervisor = make_supervisor(
            SupervisorEvents(
                capacity=self._on_capacity,
                started=self._on_started,
                finished=self._on_finished,
                lost=self._on_lost,
                revoked=self._on_revoked,
            )
        )
        self._draining = False
        self._closing = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.Task[None] | None = None
        self._ready: collections.deque[_Ready] = collections.deque()
        self._give_back: list[Claim] = []
        self._run_avg = float("inf")  # running average of attempt run times (s)
        self._more_due = False  # the last claim got all it asked for
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_due = False
        # Free slots with nothing on its way to them: every store transaction claims for
        # them before it commits (see _claim_in_commit).
        self._hook_demand = 0
        # Jobs a user asked to kill, and whether the kill counts as a failed attempt.
        self._kills: dict[str, bool] = {}
        # Jobs asked back from executors because queue settings changed: they return to
        # the store, to be claimed again under the new limits.
        self._recall: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        if self._closing:
            return Mode.CLOSING
        if self._draining:
            return Mode.DRAINING
        if self.supervisor.desired == 0:
            return Mode.NO_SLOTS
        return Mode.RUNNING

    def drain(self) -> None:
        """Stop claiming; jobs waiting on executors or held ahead go back."""
        self._draining = True
        self._hook_demand = 0
        self.supervisor.revoke_all_queued()
        self._flush_due = True
        self.wake()

    def start(self) -> None:
        self.committer.before_commit = self._claim_in_commit
        self._task = asyncio.create_task(self._run(), name="dispatcher")
        self._tick = asyncio.create_task(self._safety_tick(), name="safety-tick")
        self.wake()

    async def close(self) -> None:
        """Stop; outcomes not yet recorded are recorded, jobs claimed ahead are given back."""
        if self._tick is not None:
            self._tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick
        self._hook_demand = 0
        self.committer.before_commit = None
        if self._task is not None:
            self._closing = True
            self.wake()
            try:
                await asyncio.wait_for(self._task, CLOSE_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                log.error("dispatcher_close_timeout", outcomes=len(self.recorder.pending))
        for timer in (self._timer, self._flush_timer):
            if timer is not None:
                timer.cancel()

    def wake(self) -> None:
        """Something changed: look for due jobs and free slots soon."""
        self._wake.set()

    def wake_at(self, when: float) -> None:
        """Look again at wall-clock time ``when`` (the next retry or delayed job)."""
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - time.time()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.wake()

    def queues_changed(self) -> None:
        """A queue was paused or its limits changed: jobs claimed ahead of the slots go
        back to the store, so the next claims follow the new settings at once."""
        self._give_back += [entry.claim for entry in self._ready]
        self._ready.clear()
        self._recall.update(self.supervisor.revoke_all_queued())
        self._hook_demand = 0
        self._flush_due = True
        self.wake()

    async def kill(self, job_ids: list[str], signum: int, retry: bool) -> list[str]:
        """Stop these ``processing`` jobs (a user's `kill`); the ids this daemon does not
        hold. A running job gets ``signum``, then SIGKILL after the grace period, and its
        attempt ends ``killed``; one claimed but not started is cancelled unstarted."""
        absent: list[str] = []
        unstarted: list[Claim] = []
        for job_id in job_ids:
            entry = next((e for e in self._ready if e.claim.job.id == job_id), None)
            if entry is not None:
                self._ready.remove(entry)
                unstarted.append(entry.claim)
            elif self.supervisor.kill(job_id, signum):
                self._kills[job_id] = retry
            else:
                absent.append(job_id)
        if unstarted:
            await self._cancel_unstarted(unstarted)
        return absent

    async def _cancel_unstarted(self, claims: list[Claim]) -> None:
        """Jobs killed before they started: given back and cancelled in one transaction."""
        ids = [c.job.id for c in claims]
        now = time.time()

        def work(store: Store) -> list[Job]:
            store.release_claims(claims)
            return store.cancel_jobs(ids, now, "killed by request before it started")

        cancelled = await self.committer.call(work)
        for job in cancelled:  # the killed jobs, then the jobs that waited on them
            self.events.cancelled(job)
        self.wake()

    # -- claiming -------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not (self._closing or self._flush_due or self._urgent()):
                # Every slot has work: let outcomes gather a moment to share one commit.
                if self.recorder.pending and self._flush_timer is None:
                    self._flush_timer = loop.call_later(RECORD_DELAY_S, self._flush_now)
                continue
            self._flush_due = False
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            failed = True
            try:
                await self._cycle()
                failed = False
            except StoreUnavailable:
                pass  # the committer logged the outage once; outcomes are kept
            except QueuectlError as exc:
                log.error("claim_failed", error=str(exc))
            except Exception:
                log.exception("dispatch_failed")
            if self._closing and (failed or not (self.recorder.pending or self._ready)):
                return  # what could not be recorded now, recovery takes back

    def _flush_now(self) -> None:
        self._flush_timer = None
        self._flush_due = True
        self._wake.set()

    def _urgent(self) -> bool:
        """True when the store should be visited now rather than a little later."""
        sup = self.supervisor
        if self._give_back or len(self.recorder.pending) >= MAX_RECORD_BATCH:
            return True
        if self.mode is not Mode.RUNNING:
            return bool(self.recorder.pending or self._ready)
        if sup.free_slots():
            return True  # a slot waits for a job (the ready list is empty)
        low_water = self._target() // 2
        return self._more_due and len(self._ready) < low_water

    def _target(self) -> int:
        """How many jobs to hold claimed ahead of the slots (0 unless jobs are short)."""
        if self.mode is not Mode.RUNNING or not self._run_avg < PREFETCH_HORIZON_S:
            return 0
        per_slot = int(PREFETCH_HORIZON_S / max(self._run_avg, 1e-4))
        return min(PREFETCH_MAX, min(PREFETCH_MAX_PER_SLOT, per_slot) * self.supervisor.running)

    async def _cycle(self) -> None:
        """Record the outcomes gathered so far and claim for free slots: one store call."""
        sup = self.supervisor
        self._feed()
        outcomes = self.recorder.take()
        now_m = time.monotonic()
        running = self.mode is Mode.RUNNING
        if not running:
            self._give_back += [entry.claim for entry in self._ready]
            self._ready.clear()
        else:
            while self._ready and now_m - self._ready[0].since > READY_MAX_AGE_S:
                self._give_back.append(self._ready.popleft().claim)
        give_back, self._give_back = self._give_back, []
        free = sup.free_slots() if running else 0
        ahead = max(0, self._target() - len(self._ready))
        if not (outcomes or give_back or free or ahead):
            return
        owner, now = self.owner, time.time()
        default_timeout = self._settings().default_timeout
        margin = self.config.kill_grace + self.config.lease_margin
        results = [o.result for o in outcomes]
        wanted = free + ahead
        # This cycle claims for the free slots itself: the commit hook must not too.
        self._hook_demand = 0

        def work(store: Store) -> tuple[Finished, list[Claim], float | None]:
            recorded = store.finish_attempts(results) if results else Finished([], Settled())
            if give_back:
                store.release_claims(give_back)
            claims = store.claim_due(owner, wanted, now, default_timeout, margin) if wanted else []
            for i in range(free, len(claims)):
                if not claims[i].job.idempotent:
                    # Held ahead, a crash would end it unstarted: it waits for a free slot.
                    store.release_claims(claims[i:])
                    del claims[i:]
                    break
            next_due = store.next_due_at(now) if wanted and len(claims) < wanted else None
            return recorded, claims, next_due

        try:
            recorded, claims, next_due = await self.committer.call(work)
        except QueuectlError as exc:
            self._update_demand()
            # Nothing of the cycle was kept. Record each outcome on its own, so one that
            # cannot be stored does not hold back the others; give-backs wait a cycle.
            if not isinstance(exc, StoreUnavailable):  # an outage is logged once
                log.error("cycle_failed", error=str(exc), outcomes=len(outcomes))
            self._give_back += give_back
            for o in outcomes:
                await self.recorder.store_one(o)
            return
        for o, ok in zip(outcomes, recorded.ok, strict=True):
            self.recorder.after_record(o, ok)
        self.recorder.after_settled(recorded.settled)
        self._more_due = wanted > 0 and len(claims) == wanted
        now_m = time.monotonic()
        self._ready.extend(_Ready(claim, now_m) for claim in claims)
        self._feed()
        self._update_demand()
        if self._more_due:
            self.wake()  # there may be more due jobs and more free slots
        elif next_due is not None:
            self.wake_at(next_due)

    def _feed(self) -> None:
        """Hand jobs from the ready list to free slots, at once; then send short jobs to
        wait behind running ones, so no slot waits for the daemon between two. A free
        slot with nothing ready takes a waiting job back from another executor."""
        if self.mode is not Mode.RUNNING:
            return
        sup = self.supervisor
        if not self._ready:
            free = sup.free_slots()
            if free:
                sup.revoke_queued(free)
            return
        settings = self._settings()
        while self._ready and sup.free_slots():
            self._send(self._ready.popleft().claim, settings, queued=False)
        if self._ready and self._target() > 0:
            room = sup.queue_room()
            while self._ready and room > 0:
                if not self._ready[0].claim.job.idempotent:
                    break  # a job that must not run twice waits for a free slot
                self._send(self._ready.popleft().claim, settings, queued=True)
                room -= 1

    def _update_demand(self) -> None:
        if self.mode is not Mode.RUNNING or self._ready:
            self._hook_demand = 0
        else:
            self._hook_demand = self.supervisor.free_slots()

    def _claim_in_commit(self, store: Store) -> Callable[[], None] | None:
        """Store thread, end of every transaction: claim for slots waiting with nothing.

        A job enqueued while a slot is free is thus claimed in the enqueue's own commit
        and handed out as soon as it is durable, one sync sooner than by a cycle.
        """
        demand = self._hook_demand
        if demand <= 0:
            return None
        default_timeout = self._settings().default_timeout
        margin = self.config.kill_grace + self.config.lease_margin
        claims = store.claim_due(self.owner, demand, time.time(), default_timeout, margin)
        if not claims:
            return None
        self._hook_demand = max(0, self._hook_demand - len(claims))

        def take() -> None:
            now_m = time.monotonic()
            self._ready.extend(_Ready(claim, now_m) for claim in claims)
            self._feed()
            self._update_demand()
            self.wake()  # a cycle gives back what no slot took, or claims more

        return take

    def _send(self, claim: Claim, settings: QueueSettings, queued: bool) -> None:
        job = claim.job
        timeout = job.timeout if job.timeout is not None else settings.default_timeout
        uid = job.owner_uid if self.run_as_owner and job.owner_uid else None
        cwd = job.cwd or (procs.identity_of(uid).env["HOME"] if uid else self.config.home)
        # joblog.log_path without building a Path per job (log_dir is normalized)
        log_path = os.path.join(self.config.log_dir, f"job_{job.id}.txt")
        env = {**job.env, "QUEUECTL_QUEUE": job.queue, "QUEUECTL_LOG": log_path}
        if job.parents:
            env.update(self._parents_env(job))
        limited = self.limits_of(job)
        how = limits.plan(limited, timeout, self.controllers) if limited else None
        run = RunJob(
            job_id=job.id,
            attempt=claim.attempt,
            command=job.command,
            cwd=cwd,
            timeout=timeout,
            kill_grace=self.config.kill_grace,
            log_path=log_path,
            log_max_bytes=self.config.log_max_bytes,
            uid=uid,
            env=env,
            cgroup=None
            if self.cgroups is None
            else attempt_path(self.cgroups, job.id, claim.attempt),
            memory=limited.memory,
            cgroup_files=how.cgroup_files if how and self.cgroups else None,
            rlimits=how.rlimits if how else None,
            limits_note=how.note if how else None,
        )
        hung_after = timeout + self.config.kill_grace + self.config.lease_margin
        if self.supervisor.assign(claim, run, hung_after, queued) is None:
            self._ready.appendleft(_Ready(claim, time.monotonic()))

    def _parents_env(self, job: Job) -> dict[str, str]:
        """``QUEUECTL_PARENTS`` (ids, space-separated) and, for the Nth parent (from 1, in
        the order given), ``QUEUECTL_PARENT_N_ID``, ``_STATE``, ``_EXIT`` and ``_LOG``."""
        env = {"QUEUECTL_PARENTS": " ".join(p.id for p in job.parents)}
        for n, parent in enumerate(job.parents, 1):
            prefix = f"QUEUECTL_PARENT_{n}_"
            env[prefix + "ID"] = parent.id
            env[prefix + "STATE"] = parent.state.value
            env[prefix + "EXIT"] = "" if parent.exit_code is None else str(parent.exit_code)
            env[prefix + "LOG"] = os.path.join(self.config.log_dir, f"job_{parent.id}.txt")
        return env

    # -- what the executors report --------------------------------------------------

    def _on_started(self, claim: Claim, executor: str) -> None:
        """Announced when the executor says so: a job sent ahead and handed back is
        announced once, when it really starts, and always after its ``enqueued``."""
        job = claim.job
        log.debug("job_started", job_id=job.id, attempt=claim.attempt, worker=executor)
        self.events.publish(
            "started",
            id=job.id,
            attempt=claim.attempt,
            command=job.command,
            worker=executor,
            owner_uid=job.owner_uid,
        )

    def _on_capacity(self) -> None:
        self._slots_changed()
        self._feed()
        self._update_demand()
        self.wake()

    def _on_revoked(self, claim: Claim) -> None:
        """A job sent to wait on an executor came back unstarted: next in line again."""
        job_id = claim.job.id
        if self._kills.pop(job_id, None) is not None:
            task = asyncio.get_running_loop().create_task(self._cancel_unstarted([claim]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if job_id in self._recall or self.mode is not Mode.RUNNING:
            self._recall.discard(job_id)
            self._give_back.append(claim)
            self.wake()
            return
        self._ready.appendleft(_Ready(claim, time.monotonic()))
        self._feed()
        self._update_demand()

    def limits_of(self, job: Job) -> limits.Limits:
        """A job's limits: its own, else the configured defaults (a SIGHUP changes them)."""
        default = self.config.default_limits()
        return limits.Limits(
            memory=job.memory if job.memory is not None else default.memory,
            cpus=job.cpus if job.cpus is not None else default.cpus,
            max_procs=job.max_procs if job.max_procs is not None else default.max_procs,
        )

    def _on_finished(self, claim: Claim, result: JobFinished, executor: str) -> None:
        """An attempt ended: its slot gets the next job now, if one is ready; the outcome
        is recorded by the next cycle."""
        self._feed()
        ran = result.finished_at - result.started_at
        if self._run_avg == float("inf"):
            self._run_avg = ran
        else:
            self._run_avg += RUN_AVG_WEIGHT * (ran - self._run_avg)
        retry_killed = self._kills.pop(claim.job.id, False)
        self.recorder.pending.append(
            self.recorder.outcome(
                claim,
                result.outcome,
                result.exit_code,
                result.error,
                result.started_at,
                result.finished_at,
                executor,
                retry_killed=retry_killed,
                cpu_seconds=result.cpu_seconds,
                peak_bytes=result.peak_bytes,
            )
        )
        self._after_outcome()

    def _on_lost(self, claim: Claim, reason: str) -> None:
        """An executor died holding the job: it goes back to the queue, interrupted."""
        self.recorder.pending.append(self.recorder.interrupted(claim, reason))
        self._flush_due = True
        self.wake()

    def _after_outcome(self) -> None:
        self._update_demand()
        if self._urgent():
            self.wake()
        elif self._flush_timer is None and not self._flush_due:
            # Every slot has work: record this outcome with the next ones, a moment
            # later (no need to wake the dispatcher task for each job).
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(RECORD_DELAY_S, self._flush_now)

    # -- backstop -------------------------------------------------------------

    async def _safety_tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.safety_poll or 5.0)
            self._flush_due = True  # a full cycle, even if nothing looks urgent
            self.wake()
            await self.recorder.retry_unrecorded()
            self.supervisor.kill_hung()
            await rescue_expired_leases(self.committer, self.recorder, self.owner)
            await rescue_lost_claims(self.committer, self.recorder, self.owner, self.holds())

    def holds(self) -> set[str]:
        """The jobs this daemon knows it holds: claimed ahead, with an executor, or
        ended with the outcome not yet recorded."""
        ids = {entry.claim.job.id for entry in self._ready}
        ids.update(claim.job.id for claim in self._give_back)
        ids.update(self.supervisor.held_ids())
        ids.update(self.recorder.unrecorded_ids())
        return ids

    def store_recovered(self) -> None:
        """The store answers again after an outage: record what waited, claim again."""
        self._flush_due = True
        self.wake()
        task = asyncio.get_running_loop().create_task(
            self.recorder.retry_unrecorded(), name="retry-unrecorded"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
