"""Claim due jobs, hand them to idle workers, record outcomes, and wake up at the right time.

Nothing here sleeps in a loop: an enqueue, a finished job or a ready worker calls
:meth:`Dispatcher.wake`; the next due retry or delayed job sets one timer; a slow
safety tick is only a backstop (and the place where hung workers are caught).

Throughput comes from doing the store work of many jobs at once, off the workers'
path. One *cycle* records every outcome that arrived since the last one and claims
jobs for the idle workers, in a single store call (one transaction, one sync). When
jobs are short and plentiful the dispatcher also claims a few ahead of the workers
(the *ready* list, about :data:`PREFETCH_HORIZON_S` of work): a worker that finishes
gets its next job at once, from memory, and outcomes then wait up to
:data:`RECORD_DELAY_S` to share a commit. A job on the ready list is claimed like any
other (``processing``, leased to this node), so a crash returns it to the queue through
:meth:`Dispatcher.recover`; a drain, a scale to zero or a wait longer than
:data:`READY_MAX_AGE_S` gives it back unstarted, as if it had never been claimed.
Jobs that must not run twice (``idempotent`` false) are never claimed ahead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from queuectl.errors import QueuectlError
from queuectl.protocol import JobFinished, JobState, Outcome, RunJob
from queuectld import procs
from queuectld.committer import Committer
from queuectld.config import DaemonConfig
from queuectld.events import EventBus
from queuectld.jobs import AttemptResult, Claim
from queuectld.retry import RetryPolicy, next_step
from queuectld.store.base import Store
from queuectld.supervisor import Supervisor, Worker

log = structlog.get_logger("queuectld.dispatcher")

# Claim ahead about this much work (by the recent average run time), at most
# PREFETCH_MAX_PER_WORKER jobs a worker; jobs that run longer are never claimed ahead.
PREFETCH_HORIZON_S = 0.05
PREFETCH_MAX_PER_WORKER = 8
# A job claimed ahead that has not reached a worker after this long is given back.
READY_MAX_AGE_S = 1.0
# While every worker has work, outcomes wait at most this long to share one commit.
RECORD_DELAY_S = 0.005
MAX_RECORD_BATCH = 1024
# Weight of the newest run time in the running average that sizes the ready list.
RUN_AVG_WEIGHT = 0.2
CLOSE_TIMEOUT_S = 30.0


@dataclass
class Assignment:
    """A job this daemon handed to a worker, for the hung-worker check."""

    worker: Worker
    claim: Claim
    deadline: float  # monotonic time after which the worker is presumed hung


@dataclass
class _Ready:
    """A job claimed ahead of the workers."""

    claim: Claim
    since: float  # monotonic time of the claim


@dataclass
class _Outcome:
    """An attempt's end, waiting to be recorded by the next cycle."""

    result: AttemptResult
    max_retries: int
    error: str | None
    owner_uid: int | None


class Dispatcher:
    """Moves jobs from the store to the workers and their outcomes back."""

    def __init__(
        self,
        committer: Committer,
        events: EventBus,
        config: DaemonConfig,
        settings: Callable[[], dict[str, float | int]],
    ) -> None:
        self.committer = committer
        self.events = events
        self.config = config
        self._settings = settings
        self.supervisor: Supervisor | None = None
        self.owner = config.node_id
        # A root daemon serves several users: each job runs as the user who submitted it.
        self.run_as_owner = os.geteuid() == 0
        self._paused = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._assignments: dict[str, Assignment] = {}
        self._unrecorded: list[AttemptResult] = []
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.Task[None] | None = None
        self._ready: collections.deque[_Ready] = collections.deque()
        self._give_back: list[Claim] = []
        self._outcomes: list[_Outcome] = []
        self._run_avg = float("inf")  # running average of attempt run times (s)
        self._more_due = False  # the last claim got all it asked for
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_due = False
        self._closing = False
        # Idle workers with nothing on its way to them: every store transaction claims
        # for them before it commits (see _claim_in_commit).
        self._hook_demand = 0

    # -- lifecycle ------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while draining: no claims; jobs queued on workers or held ahead go back."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        if value:
            self._hook_demand = 0
        if value and self.supervisor is not None:
            for worker in list(self.supervisor.workers.values()):
                for claim in worker.queued:
                    self.supervisor.revoke(worker, claim)
            self._flush_due = True
            self.wake()

    def start(self) -> None:
        if self.supervisor is not None:
            self.supervisor.on_revoked = self.on_revoked
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
                log.error("dispatcher_close_timeout", outcomes=len(self._outcomes))
        for timer in (self._timer, self._flush_timer):
            if timer is not None:
                timer.cancel()

    def wake(self) -> None:
        """Something changed: look for due jobs and idle workers soon."""
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

    @property
    def policy(self) -> RetryPolicy:
        s = self._settings()
        return RetryPolicy(
            max_retries=int(s["max-retries"]),
            backoff_base=float(s["backoff-base"]),
            backoff_max=float(s["backoff-max"]),
            max_interruptions=int(s["max-interruptions"]),
        )

    # -- recovery -------------------------------------------------------------

    async def recover(self) -> int:
        """Return the jobs this node held when it last stopped (or crashed) to the queue.

        They are recorded as interrupted: at-least-once execution means they run again.
        """
        owner, now = self.owner, time.time()
        held = await self.committer.call(lambda s: s.leased_jobs(owner, None))
        expired = await self.committer.call(lambda s: s.leased_jobs(None, now))
        if held:
            # A daemon killed together with its workers (OOM, SIGKILL to the whole unit)
            # can leave jobs running: stop them before they are handed out again.
            ids = {claim.job.id for claim in held}
            for group in procs.find_job_groups(self.config.database, ids):
                log.warning("orphaned_job_killed", pgid=group)
                procs.signal_group(group, signal.SIGKILL)
        seen: set[str] = set()
        for claim in [*held, *expired]:
            if claim.job.id in seen:
                continue
            seen.add(claim.job.id)
            reason = "queuectld stopped while the job ran"
            await self._record(claim, Outcome.INTERRUPTED, None, reason, now, now, None)
        if seen:
            log.warning("jobs_recovered", count=len(seen))
        return len(seen)

    # -- claiming -------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not (self._closing or self._flush_due or self._urgent()):
                # Every worker has work: let outcomes gather a moment to share one commit.
                if self._outcomes and self._flush_timer is None:
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
            except QueuectlError as exc:
                log.error("claim_failed", error=str(exc))
            except Exception:
                log.exception("dispatch_failed")
            if self._closing and (failed or not (self._outcomes or self._ready)):
                return  # what could not be recorded now, recover() takes back

    def _flush_now(self) -> None:
        self._flush_timer = None
        self._flush_due = True
        self._wake.set()

    def _urgent(self) -> bool:
        """True when the store should be visited now rather than a little later."""
        sup = self.supervisor
        if sup is None:
            return False
        if self._give_back or len(self._outcomes) >= MAX_RECORD_BATCH:
            return True
        if self.paused or sup.desired == 0:
            return bool(self._outcomes or self._ready)
        if sup.idle():
            return True  # a worker waits for a job (the ready list is empty)
        low_water = min(self._target(), 2 * len(sup.busy()))
        return self._more_due and len(self._ready) < low_water

    def _target(self) -> int:
        """How many jobs to hold claimed ahead of the workers (0 unless jobs are short)."""
        sup = self.supervisor
        if sup is None or self.paused or self._closing or sup.desired == 0:
            return 0
        if not self._run_avg < PREFETCH_HORIZON_S:
            return 0
        per_worker = int(PREFETCH_HORIZON_S / max(self._run_avg, 1e-4))
        return min(PREFETCH_MAX_PER_WORKER, per_worker) * sup.running

    async def _cycle(self) -> None:
        """Record the outcomes gathered so far and claim for idle workers: one store call."""
        sup = self.supervisor
        if sup is None:
            return
        self._feed_idle()
        outcomes, self._outcomes = self._outcomes, []
        now_m = time.monotonic()
        if self.paused or self._closing or sup.desired == 0:
            self._give_back += [entry.claim for entry in self._ready]
            self._ready.clear()
        else:
            while self._ready and now_m - self._ready[0].since > READY_MAX_AGE_S:
                self._give_back.append(self._ready.popleft().claim)
        give_back, self._give_back = self._give_back, []
        idle = 0 if self.paused or self._closing else len(sup.idle())
        ahead = max(0, self._target() - len(self._ready))
        if not (outcomes or give_back or idle or ahead):
            return
        owner, now = self.owner, time.time()
        default_timeout = float(self._settings()["default-timeout"])
        margin = self.config.kill_grace + self.config.lease_margin
        results = [o.result for o in outcomes]
        wanted = idle + ahead

        def work(store: Store) -> tuple[list[bool], list[Claim], float | None]:
            recorded = [store.finish_attempt(r) for r in results]
            for claim in give_back:
                store.release_claim(claim)
            claims = store.claim_due(owner, wanted, now, default_timeout, margin) if wanted else []
            for i in range(idle, len(claims)):
                if not claims[i].job.idempotent:
                    # Held ahead, a crash would end it unstarted: it waits for an idle worker.
                    for claim in claims[i:]:
                        store.release_claim(claim)
                    del claims[i:]
                    break
            next_due = store.next_due_at() if wanted and len(claims) < wanted else None
            return recorded, claims, next_due

        try:
            recorded, claims, next_due = await self.committer.call(work)
        except QueuectlError as exc:
            # Nothing of the cycle was kept. Record each outcome on its own, so one that
            # cannot be stored does not hold back the others; give-backs wait a cycle.
            log.error("cycle_failed", error=str(exc), outcomes=len(outcomes))
            self._give_back += give_back
            for o in outcomes:
                await self._store_outcome(o)
            return
        for o, ok in zip(outcomes, recorded, strict=True):
            self._after_record(o, ok)
        self._more_due = wanted > 0 and len(claims) == wanted
        now_m = time.monotonic()
        self._ready.extend(_Ready(claim, now_m) for claim in claims)
        self._feed_idle()
        self._update_demand()
        if self._more_due:
            self.wake()  # there may be more due jobs and more idle workers
        elif next_due is not None:
            self.wake_at(next_due)

    def _feed_idle(self) -> None:
        """Hand jobs from the ready list to idle workers, at once; then queue one behind
        the running job of each busy worker, so that none waits for the daemon between
        two short jobs. An idle worker with nothing ready takes a queued job back."""
        sup = self.supervisor
        if sup is None or self.paused or self._closing:
            return
        idle = sup.idle()
        if not self._ready:
            if idle:
                self._revoke_queued(len(idle))
            return
        default_timeout = float(self._settings()["default-timeout"])
        while idle and self._ready:
            self._dispatch(idle.pop(0), self._ready.popleft().claim, default_timeout)
        if self._ready and self._target() > 0:
            for worker in sup.can_queue():
                if not self._ready or not self._ready[0].claim.job.idempotent:
                    break  # a job that must not run twice waits for an idle worker
                claim = self._ready.popleft().claim
                self._dispatch(worker, claim, default_timeout, queued=True)

    def _update_demand(self) -> None:
        sup = self.supervisor
        if sup is None or self.paused or self._closing or self._ready:
            self._hook_demand = 0
        else:
            self._hook_demand = len(sup.idle())

    def _claim_in_commit(self, store: Store) -> Callable[[], None] | None:
        """Store thread, end of every transaction: claim for workers waiting with nothing.

        A job enqueued while a worker is idle is thus claimed in the enqueue's own commit
        and handed out as soon as it is durable, one sync sooner than by a cycle.
        """
        demand = self._hook_demand
        if demand <= 0:
            return None
        default_timeout = float(self._settings()["default-timeout"])
        margin = self.config.kill_grace + self.config.lease_margin
        claims = store.claim_due(self.owner, demand, time.time(), default_timeout, margin)
        if not claims:
            return None
        self._hook_demand = max(0, self._hook_demand - len(claims))

        def take() -> None:
            now_m = time.monotonic()
            self._ready.extend(_Ready(claim, now_m) for claim in claims)
            self._feed_idle()
            self._update_demand()
            self.wake()  # a cycle gives back what no worker took, or claims more

        return take

    def _revoke_queued(self, count: int) -> None:
        assert self.supervisor is not None
        for worker in list(self.supervisor.workers.values()):
            if count <= 0:
                return
            for claim in worker.queued:
                if claim.job.id not in worker.revoking:
                    self.supervisor.revoke(worker, claim)
                    count -= 1
                    break

    async def on_revoked(self, worker: Worker, claim: Claim) -> None:
        """A job queued on a worker came back unstarted: next in line again (or given back)."""
        self._assignments.pop(claim.job.id, None)
        sup = self.supervisor
        if self.paused or self._closing or sup is None or sup.desired == 0:
            self._give_back.append(claim)
            self.wake()
            return
        self._ready.appendleft(_Ready(claim, time.monotonic()))
        self._feed_idle()
        self._update_demand()

    def _dispatch(
        self, worker: Worker, claim: Claim, default_timeout: float, queued: bool = False
    ) -> None:
        assert self.supervisor is not None
        job = claim.job
        timeout = job.timeout if job.timeout is not None else default_timeout
        uid = job.owner_uid if self.run_as_owner and job.owner_uid else None
        cwd = job.cwd or (procs.identity_of(uid).env["HOME"] if uid else self.config.home)
        run = RunJob(
            job_id=job.id,
            attempt=claim.attempt,
            command=job.command,
            cwd=cwd,
            timeout=timeout,
            kill_grace=self.config.kill_grace,
            # joblog.log_path without building a Path per job (log_dir is normalized)
            log_path=os.path.join(self.config.log_dir, f"job_{job.id}.txt"),
            log_max_bytes=self.config.log_max_bytes,
            uid=uid,
        )
        hung_after = timeout + self.config.kill_grace + self.config.lease_margin
        start = time.monotonic()
        running = self._assignments.get(worker.claim.job.id) if worker.claim else None
        if queued and running is not None:
            start = running.deadline  # it starts when the running job ends, at the latest
        self._assignments[job.id] = Assignment(worker, claim, start + hung_after)
        self.events.publish(
            "started",
            id=job.id,
            attempt=claim.attempt,
            command=job.command,
            worker=worker.name,
            owner_uid=job.owner_uid,
        )
        log.debug("job_started", job_id=job.id, attempt=claim.attempt, worker=worker.name)
        if queued:
            self.supervisor.queue_next(worker, claim, run)
        else:
            self.supervisor.assign(worker, claim, run)

    # -- outcomes -------------------------------------------------------------

    async def on_finished(self, worker: Worker, claim: Claim, result: JobFinished) -> None:
        """A worker reported the end of an attempt: it gets its next job now, if one is
        ready; the outcome is recorded by the next cycle (it returns without waiting)."""
        self._feed_idle()
        ran = result.finished_at - result.started_at
        if self._run_avg == float("inf"):
            self._run_avg = ran
        else:
            self._run_avg += RUN_AVG_WEIGHT * (ran - self._run_avg)
        self._outcomes.append(
            self._outcome(
                claim,
                result.outcome,
                result.exit_code,
                result.error,
                result.started_at,
                result.finished_at,
                worker.name,
            )
        )
        self._update_demand()
        if self._urgent():
            self.wake()
        elif self._flush_timer is None and not self._flush_due:
            # Every worker has work: record this outcome with the next ones, a moment
            # later (no need to wake the dispatcher task for each job).
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(RECORD_DELAY_S, self._flush_now)

    async def on_lost(self, worker: Worker, claim: Claim, reason: str) -> None:
        """A worker died holding a job: the job goes back to the queue, marked interrupted."""
        now = time.time()
        await self._record(claim, Outcome.INTERRUPTED, None, reason, now, now, worker.name)

    async def _record(
        self,
        claim: Claim,
        outcome: Outcome,
        exit_code: int | None,
        error: str | None,
        started_at: float,
        finished_at: float,
        worker: str | None,
        started: bool = True,
    ) -> None:
        """Record one outcome now, in its own store call."""
        await self._store_outcome(
            self._outcome(
                claim, outcome, exit_code, error, started_at, finished_at, worker, started
            )
        )

    def _outcome(
        self,
        claim: Claim,
        outcome: Outcome,
        exit_code: int | None,
        error: str | None,
        started_at: float,
        finished_at: float,
        worker: str | None,
        started: bool = True,
    ) -> _Outcome:
        job = claim.job
        self._assignments.pop(job.id, None)
        max_retries = job.max_retries
        if max_retries is None:
            max_retries = int(self._settings()["max-retries"])
        step = next_step(
            outcome,
            job.attempts,
            job.interruptions,
            max_retries,
            self.policy,
            finished_at,
            # A job that never reached a worker can always go back to the queue.
            idempotent=job.idempotent or not started,
        )
        result = AttemptResult(
            job_id=job.id,
            attempt=claim.attempt,
            lease_token=claim.lease_token,
            outcome=outcome.value,
            exit_code=exit_code,
            error=error,
            job_error=step.reason or error,
            started_at=started_at,
            finished_at=finished_at,
            next_state=step.state,
            attempts=step.attempts,
            interruptions=step.interruptions,
            run_at=step.run_at,
            worker=worker,
        )
        return _Outcome(result, max_retries, error, job.owner_uid)

    async def _store_outcome(self, o: _Outcome) -> None:
        result = o.result
        try:
            recorded = await self.committer.call(lambda s: s.finish_attempt(result))
        except QueuectlError as exc:
            # The job keeps its lease; the safety tick records the result later.
            log.error(
                "result_not_recorded",
                job_id=result.job_id,
                attempt=result.attempt,
                worker=result.worker,
                error=str(exc),
            )
            self._unrecorded.append(result)
            return
        self._after_record(o, recorded)

    def _after_record(self, o: _Outcome, recorded: bool) -> None:
        result = o.result
        if not recorded:
            log.warning(
                "late_result_refused",
                job_id=result.job_id,
                attempt=result.attempt,
                worker=result.worker,
            )
            return
        self._announce(result, o.max_retries, o.error, o.owner_uid)
        if result.next_state is JobState.FAILED:
            self.wake_at(result.run_at)
        elif result.next_state is JobState.PENDING:
            self.wake()

    def _announce(
        self, result: AttemptResult, max_retries: int, error: str | None, owner_uid: int | None
    ) -> None:
        fields: dict[str, Any] = {
            "owner_uid": owner_uid,
            "id": result.job_id,
            "attempt": result.attempt,
            "outcome": result.outcome,
            "exit_code": result.exit_code,
            "error": error,
            "worker": result.worker,
        }
        state = result.next_state
        level = log.info if state is JobState.COMPLETED else log.warning
        if state is JobState.FAILED:
            fields["retry_at"] = result.run_at
            fields["retry"] = result.attempts
            fields["max_retries"] = max_retries
        elif state is JobState.DEAD:
            fields["reason"] = result.job_error
        self.events.publish(state.value, **fields)
        level(
            f"job_{state.value}", **{("job_id" if k == "id" else k): v for k, v in fields.items()}
        )

    # -- backstop -------------------------------------------------------------

    async def _safety_tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.safety_poll or 5.0)
            self._flush_due = True  # a full cycle, even if nothing looks urgent
            self.wake()
            await self._retry_unrecorded()
            self._kill_hung_workers()
            await self._rescue_expired_leases()

    async def _retry_unrecorded(self) -> None:
        pending, self._unrecorded = self._unrecorded, []
        for result in pending:
            try:
                await self.committer.call(lambda s, r=result: s.finish_attempt(r))  # type: ignore[misc]
            except QueuectlError:
                self._unrecorded.append(result)
            else:
                self.wake()

    async def _rescue_expired_leases(self) -> None:
        """Return jobs whose lease expired under another owner (a daemon that vanished).

        Our own leases are not touched here: the hung-worker check ends their workers.
        """
        owner, now = self.owner, time.time()
        try:
            expired = await self.committer.call(lambda s: s.leased_jobs(None, now))
        except QueuectlError as exc:
            log.error("lease_rescue_failed", error=str(exc))
            return
        for claim in expired:
            if claim.job.lease_owner == owner:
                continue
            reason = f"the lease of {claim.job.lease_owner} expired"
            log.warning("lease_expired", job_id=claim.job.id, owner=claim.job.lease_owner)
            await self._record(claim, Outcome.INTERRUPTED, None, reason, now, now, None)

    def _kill_hung_workers(self) -> None:
        now = time.monotonic()
        for job_id, assignment in list(self._assignments.items()):
            if now > assignment.deadline:
                log.error(
                    "worker_hung",
                    job_id=job_id,
                    attempt=assignment.claim.attempt,
                    worker=assignment.worker.name,
                )
                procs.kill_process(assignment.worker.proc.pid, signal.SIGKILL)
                assignment.deadline = float("inf")  # its exit returns the job to the queue
