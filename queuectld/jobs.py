"""Jobs as the daemon sees them: the row, its attempts, and the allowed state changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from queuectl.protocol import DEFAULT_QUEUE, AttemptView, JobState, JobView
from queuectld.retry import RetryPolicy

if TYPE_CHECKING:
    from queuectld.config import QueueSettings

# Which state may follow which; the store refuses anything else.
# A job whose time has come (``waiting`` for its delay, ``failed`` for its retry) is
# made ``pending`` by the claim that finds it due; only ``pending`` jobs are claimed.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PROCESSING, JobState.CANCELLED}),
    JobState.WAITING: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.FAILED: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.PROCESSING: frozenset(
        {
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.DEAD,
            JobState.PENDING,
            JobState.CANCELLED,
        }
    ),
    # `retry` runs a finished job again, keeping its history.
    JobState.DEAD: frozenset({JobState.PENDING}),
    JobState.COMPLETED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset({JobState.PENDING}),
}

# States in which a job still has work ahead of it.
ACTIVE = (JobState.PENDING, JobState.WAITING, JobState.PROCESSING, JobState.FAILED)
# States a job never leaves by itself (`wait` and `logs -f` end there).
FINAL = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)
# States `cancel` may end (not started yet); `kill` ends a `processing` one.
CANCELLABLE = (JobState.PENDING, JobState.WAITING, JobState.FAILED)
# States `retry` may start again: the final ones.
RETRYABLE = FINAL


def can_transition(old: JobState, new: JobState) -> bool:
    """True if a job may go from ``old`` to ``new``."""
    return new in TRANSITIONS[old]


@dataclass(frozen=True)
class NewJob:
    """A validated job about to be stored; ``None`` fields follow the queue settings."""

    command: str
    id: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    run_at: float | None = None
    cwd: str | None = None
    owner_uid: int | None = None
    idempotent: bool = True
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    unique_key: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    backoff_base: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None
    memory: int | None = None  # limits (None: the daemon's defaults, if any)
    cpus: float | None = None
    max_procs: int | None = None


@dataclass(frozen=True)
class Attempt:
    """One row of a job's attempt history."""

    attempt: int
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    outcome: str | None = None
    error: str | None = None
    worker: str | None = None
    job_error: str | None = None  # the job's last_error (the DLQ reason when it dies)
    cpu_seconds: float | None = None
    peak_bytes: int | None = None

    def view(self) -> AttemptView:
        return AttemptView(
            attempt=self.attempt,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_code=self.exit_code,
            outcome=self.outcome,
            error=self.error,
            worker=self.worker,
            cpu_seconds=self.cpu_seconds,
            peak_bytes=self.peak_bytes,
        )


@dataclass(frozen=True)
class Job:
    """One job row. ``max_retries``/``timeout`` are ``None`` when the job follows the settings."""

    id: str
    command: str
    state: JobState
    attempts: int
    interruptions: int
    max_retries: int | None
    timeout: float | None
    created_at: float
    updated_at: float
    run_at: float
    last_exit_code: int | None = None
    last_error: str | None = None
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    cwd: str | None = None
    owner_uid: int | None = None
    idempotent: bool = True
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    unique_key: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    backoff_base: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None
    memory: int | None = None
    cpus: float | None = None
    max_procs: int | None = None
    history: tuple[Attempt, ...] = field(default=())

    def policy(self, settings: QueueSettings) -> RetryPolicy:
        """The retry policy of this job: its own values over the queue settings."""
        return RetryPolicy(
            max_retries=settings.max_retries if self.max_retries is None else self.max_retries,
            backoff_base=settings.backoff_base if self.backoff_base is None else self.backoff_base,
            backoff_max=settings.backoff_max if self.backoff_max is None else self.backoff_max,
            jitter=settings.jitter if self.jitter is None else self.jitter,
            max_interruptions=settings.max_interruptions,
        )

    def view(self, settings: QueueSettings) -> JobView:
        """The job as clients see it, with the settings filled in."""
        policy = self.policy(settings)
        return JobView(
            id=self.id,
            command=self.command,
            queue=self.queue,
            priority=self.priority,
            unique_key=self.unique_key,
            env=dict(self.env),
            cwd=self.cwd,
            owner_uid=self.owner_uid,
            idempotent=self.idempotent,
            state=self.state.value,
            attempts=self.attempts,
            interruptions=self.interruptions,
            max_retries=policy.max_retries,
            timeout=settings.default_timeout if self.timeout is None else self.timeout,
            created_at=self.created_at,
            updated_at=self.updated_at,
            run_at=self.run_at,
            last_exit_code=self.last_exit_code,
            last_error=self.last_error,
            backoff_base=policy.backoff_base,
            backoff_max=policy.backoff_max,
            jitter=policy.jitter,
            memory=self.memory,
            cpus=self.cpus,
            max_procs=self.max_procs,
            history=[a.view() for a in self.history],
        )


@dataclass(frozen=True)
class Claim:
    """A job handed to this daemon: run attempt ``attempt`` under ``lease_token``."""

    job: Job
    attempt: int
    lease_token: str


@dataclass(frozen=True)
class AttemptResult:
    """What the daemon records when an attempt ends."""

    job_id: str
    attempt: int
    lease_token: str
    outcome: str
    exit_code: int | None
    error: str | None
    started_at: float | None  # None: keep the start recorded at the claim
    finished_at: float
    next_state: JobState
    attempts: int
    interruptions: int
    run_at: float
    worker: str | None = None
    job_error: str | None = None  # the job's last_error (the DLQ reason when it dies)
    cpu_seconds: float | None = None
    peak_bytes: int | None = None
