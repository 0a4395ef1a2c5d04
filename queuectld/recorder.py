"""Turn the end of an attempt into a store update and an announcement.

The retry policy (:mod:`queuectld.retry`) decides where a job goes next; this module
builds the :class:`~queuectld.jobs.AttemptResult` the store records, keeps outcomes
until the dispatcher's next cycle stores them together, stores one on its own when a
cycle could not, and announces each recorded outcome on the event bus and in the log.

An *interruption* (an executor died, the daemon stopped, a lease expired) is decided
in one place, :meth:`Recorder.interrupted`: the attempt keeps the start the store gave
it at the claim, and ends when the interruption was noticed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from queuectl.errors import QueuectlError, StoreUnavailable
from queuectl.protocol import JobState, Outcome
from queuectld.committer import Committer
from queuectld.config import QueueSettings
from queuectld.events import EventBus
from queuectld.jobs import AttemptResult, Claim
from queuectld.retry import next_step
from queuectld.store.base import Settled

log = structlog.get_logger("queuectld.recorder")


@dataclass(frozen=True)
class PendingOutcome:
    """An attempt's end, waiting to be recorded."""

    result: AttemptResult
    max_retries: int
    error: str | None
    owner_uid: int | None


class Recorder:
    """Builds, stores and announces attempt outcomes."""

    def __init__(
        self,
        committer: Committer,
        events: EventBus,
        settings: Callable[[], QueueSettings],
        wake: Callable[[], None],
        wake_at: Callable[[float], None],
    ) -> None:
        self._committer = committer
        self._events = events
        self._settings = settings
        self._wake = wake
        self._wake_at = wake_at
        self.pending: list[PendingOutcome] = []
        self._unrecorded: list[AttemptResult] = []

    def outcome(
        self,
        claim: Claim,
        outcome: Outcome,
        exit_code: int | None,
        error: str | None,
        started_at: float | None,
        finished_at: float,
        worker: str | None,
        started: bool = True,
        retry_killed: bool = False,
        cpu_seconds: float | None = None,
        peak_bytes: int | None = None,
    ) -> PendingOutcome:
        """The record of one attempt's end; ``started_at`` None keeps the claim's time."""
        job = claim.job
        policy = job.policy(self._settings())
        max_retries = policy.max_retries
        step = next_step(
            outcome,
            job.attempts,
            job.interruptions,
            max_retries,
            policy,
            finished_at,
            # A job that never reached an executor can always go back to the queue.
            idempotent=job.idempotent or not started,
            retry_killed=retry_killed,
            spread=random.random(),
        )
        result = AttemptResult(
            job_id=job.id,
            attempt=claim.attempt,
            lease_token=claim.lease_token,
            outcome=outcome.value,
            exit_code=exit_code,
            error=error,
            # The DLQ reason keeps the cause: "timed out after 1s; failed once; no retries…"
            job_error=f"{error}; {step.reason}" if error and step.reason else step.reason or error,
            started_at=started_at,
            finished_at=finished_at,
            next_state=step.state,
            attempts=step.attempts,
            interruptions=step.interruptions,
            run_at=step.run_at,
            worker=worker,
            cpu_seconds=cpu_seconds,
            peak_bytes=peak_bytes,
        )
        return PendingOutcome(result, max_retries, error, job.owner_uid)

    def interrupted(self, claim: Claim, reason: str, worker: str | None = None) -> PendingOutcome:
        """The attempt was cut short by something other than the job: it goes back to
        the queue (or dead, for a job that must not run twice), not charged."""
        return self.outcome(claim, Outcome.INTERRUPTED, None, reason, None, time.time(), worker)

    def take(self) -> list[PendingOutcome]:
        """Everything gathered so far, for the next cycle to store."""
        out, self.pending = self.pending, []
        return out

    async def store_one(self, o: PendingOutcome) -> None:
        """Record one outcome now, in its own store call."""
        result = o.result
        try:
            finished = await self._committer.call(lambda s: s.finish_attempts([result]))
        except QueuectlError as exc:
            # The job keeps its lease; the safety tick records the result later.
            level = log.debug if isinstance(exc, StoreUnavailable) else log.error  # logged once
            level(
                "result_not_recorded",
                job_id=result.job_id,
                attempt=result.attempt,
                worker=result.worker,
                error=str(exc),
            )
            self._unrecorded.append(result)
            return
        self.after_record(o, finished.ok[0])
        self.after_settled(finished.settled)

    async def retry_unrecorded(self) -> None:
        pending, self._unrecorded = self._unrecorded, []
        if not pending:
            return
        try:
            finished = await self._committer.call(lambda s: s.finish_attempts(pending))
        except QueuectlError:
            self._unrecorded += pending
        else:
            self.after_settled(finished.settled)
            self._wake()

    def unrecorded_ids(self) -> set[str]:
        """Jobs whose attempt ended but whose outcome is not in the store yet."""
        return {o.result.job_id for o in self.pending} | {r.job_id for r in self._unrecorded}

    def after_record(self, o: PendingOutcome, recorded: bool) -> None:
        """Announce an outcome the store kept (a late one, from an old lease, it refused)."""
        result = o.result
        if not recorded:
            log.warning(
                "late_result_refused",
                job_id=result.job_id,
                attempt=result.attempt,
                worker=result.worker,
            )
            return
        self._announce(o)
        if result.next_state is JobState.FAILED:
            self._wake_at(result.run_at)
        elif result.next_state is JobState.PENDING:
            self._wake()

    def after_settled(self, settled: Settled) -> None:
        """Announce the jobs that the recorded outcomes unblocked or cancelled."""
        for job in settled.cancelled:
            self._events.cancelled(job)
            log.warning("job_cancelled", job_id=job.id, reason=job.last_error)
        for job in settled.unblocked:
            self._events.publish(
                "unblocked", id=job.id, state=job.state.value, owner_uid=job.owner_uid
            )
            if job.state is JobState.WAITING:
                self._wake_at(job.run_at)
        if settled.unblocked:
            self._wake()

    def _announce(self, o: PendingOutcome) -> None:
        result = o.result
        fields: dict[str, Any] = {
            "owner_uid": o.owner_uid,
            "id": result.job_id,
            "attempt": result.attempt,
            "outcome": result.outcome,
            "exit_code": result.exit_code,
            "error": o.error,
            "worker": result.worker,
            "cpu_seconds": result.cpu_seconds,
            "peak_bytes": result.peak_bytes,
        }
        state = result.next_state
        level = log.info if state is JobState.COMPLETED else log.warning
        if state is JobState.FAILED:
            fields["retry_at"] = result.run_at
            fields["retry"] = result.attempts
            fields["max_retries"] = o.max_retries
        elif state in (JobState.DEAD, JobState.CANCELLED):
            fields["reason"] = result.job_error
        self._events.publish(state.value, **fields)
        level(
            f"job_{state.value}", **{("job_id" if k == "id" else k): v for k, v in fields.items()}
        )
