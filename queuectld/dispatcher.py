"""Claim due jobs, hand them to idle workers, record outcomes, and wake up at the right time.

Nothing here sleeps in a loop: an enqueue, a finished job or a ready worker calls
:meth:`Dispatcher.wake`; the next due retry or delayed job sets one timer; a slow
safety tick is only a backstop (and the place where hung workers are caught).
"""

from __future__ import annotations

import asyncio
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
from queuectld import joblog, procs
from queuectld.committer import Committer
from queuectld.config import DaemonConfig
from queuectld.events import EventBus
from queuectld.jobs import AttemptResult, Claim
from queuectld.retry import RetryPolicy, next_step
from queuectld.store.base import Store
from queuectld.supervisor import Supervisor, Worker

log = structlog.get_logger("queuectld.dispatcher")


@dataclass
class Assignment:
    """A job this daemon handed to a worker, for the hung-worker check."""

    worker: Worker
    claim: Claim
    deadline: float  # monotonic time after which the worker is presumed hung


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
        self.paused = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._assignments: dict[str, Assignment] = {}
        self._unrecorded: list[AttemptResult] = []
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher")
        self._tick = asyncio.create_task(self._safety_tick(), name="safety-tick")
        self.wake()

    async def close(self) -> None:
        for task in (self._task, self._tick):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._timer is not None:
            self._timer.cancel()

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
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._fill()
            except QueuectlError as exc:
                log.error("claim_failed", error=str(exc))
            except Exception:
                log.exception("dispatch_failed")

    async def _fill(self) -> None:
        sup = self.supervisor
        if self.paused or sup is None:
            return
        idle = sup.idle()
        if not idle:
            return
        owner, now, limit = self.owner, time.time(), len(idle)
        default_timeout = float(self._settings()["default-timeout"])
        margin = self.config.kill_grace + self.config.lease_margin

        def claim(store: Store) -> tuple[list[Claim], float | None]:
            claims = store.claim_due(owner, limit, now, default_timeout, margin)
            return claims, (store.next_due_at() if len(claims) < limit else None)

        claims, next_due = await self.committer.call(claim)
        idle = sup.idle() if not self.paused else []
        for item in claims:
            if not idle:
                # Workers went away while we claimed: give the job straight back.
                reason = "no worker left to run it"
                await self._record(
                    item, Outcome.INTERRUPTED, None, reason, now, now, None, started=False
                )
                continue
            self._dispatch(idle.pop(0), item, default_timeout)
        if len(claims) == limit:
            self.wake()  # there may be more due jobs and more idle workers
        elif next_due is not None:
            self.wake_at(next_due)

    def _dispatch(self, worker: Worker, claim: Claim, default_timeout: float) -> None:
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
            log_path=str(joblog.log_path(self.config.log_dir, job.id)),
            log_max_bytes=self.config.log_max_bytes,
            uid=uid,
        )
        hung_after = timeout + self.config.kill_grace + self.config.lease_margin
        self._assignments[job.id] = Assignment(worker, claim, time.monotonic() + hung_after)
        self.events.publish(
            "started",
            id=job.id,
            attempt=claim.attempt,
            command=job.command,
            worker=worker.name,
            owner_uid=job.owner_uid,
        )
        log.debug("job_started", job_id=job.id, attempt=claim.attempt, worker=worker.name)
        self.supervisor.assign(worker, claim, run)

    # -- outcomes -------------------------------------------------------------

    async def on_finished(self, worker: Worker, claim: Claim, result: JobFinished) -> None:
        """A worker reported the end of an attempt."""
        await self._record(
            claim,
            result.outcome,
            result.exit_code,
            result.error,
            result.started_at,
            result.finished_at,
            worker.name,
        )

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
        try:
            recorded = await self.committer.call(lambda s: s.finish_attempt(result))
        except QueuectlError as exc:
            # The job keeps its lease; the safety tick records the result later.
            log.error("result_not_recorded", job_id=job.id, attempt=claim.attempt, error=str(exc))
            self._unrecorded.append(result)
            return
        if not recorded:
            log.warning("late_result_refused", job_id=job.id, attempt=claim.attempt)
            return
        self._announce(result, max_retries, error, job.owner_uid)
        if step.state is JobState.FAILED:
            self.wake_at(step.run_at)
        elif step.state is JobState.PENDING:
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
            self.wake()
            await self._retry_unrecorded()
            self._kill_hung_workers()

    async def _retry_unrecorded(self) -> None:
        pending, self._unrecorded = self._unrecorded, []
        for result in pending:
            try:
                await self.committer.call(lambda s, r=result: s.finish_attempt(r))  # type: ignore[misc]
            except QueuectlError:
                self._unrecorded.append(result)
            else:
                self.wake()

    def _kill_hung_workers(self) -> None:
        now = time.monotonic()
        for job_id, assignment in list(self._assignments.items()):
            if now > assignment.deadline:
                log.error("worker_hung", job_id=job_id, worker=assignment.worker.name)
                procs.kill_process(assignment.worker.proc.pid, signal.SIGKILL)
                assignment.deadline = float("inf")  # its exit returns the job to the queue
