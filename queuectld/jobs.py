"""Jobs as the daemon sees them: the row, its attempts, and the allowed state changes."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from queuectl.protocol import (
    DEFAULT_QUEUE,
    FINAL_STATES,
    AttemptView,
    EnqueueArgs,
    JobState,
    JobView,
    ParentView,
)
from queuectld.retry import RetryPolicy

if TYPE_CHECKING:
    from queuectld.config import QueueSettings

# Which state may follow which; the store refuses anything else.
# A job whose time has come (``waiting`` for its delay, ``failed`` for its retry) is
# made ``pending`` by the claim that finds it due; only ``pending`` jobs are claimed.
# A job with parents is ``blocked`` until they settle it (in the transaction that
# stores the last parent's outcome): ``pending`` (``waiting`` if its time is still to
# come), or ``cancelled`` when a parent it needed completed ended dead or cancelled.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PROCESSING, JobState.CANCELLED}),
    JobState.WAITING: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.BLOCKED: frozenset({JobState.PENDING, JobState.WAITING, JobState.CANCELLED}),
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
    # `retry` runs a finished job again, keeping its history (blocked again when it has
    # parents that are not done).
    JobState.DEAD: frozenset({JobState.PENDING, JobState.BLOCKED}),
    JobState.COMPLETED: frozenset({JobState.PENDING, JobState.BLOCKED}),
    JobState.CANCELLED: frozenset({JobState.PENDING, JobState.BLOCKED}),
}

# States in which a job still has work ahead of it.
ACTIVE = (
    JobState.PENDING,
    JobState.WAITING,
    JobState.BLOCKED,
    JobState.PROCESSING,
    JobState.FAILED,
)
# States a job never leaves by itself (`wait` and `logs -f` end there).
FINAL = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)
# States `cancel` may end (not started yet); `kill` ends a `processing` one.
CANCELLABLE = (JobState.PENDING, JobState.WAITING, JobState.BLOCKED, JobState.FAILED)
# States that cancel a child waiting on the parent with `after` (not `after_any`).
FAILED_PARENT = (JobState.DEAD, JobState.CANCELLED)
# The state an `after` parent must reach (`after_any`: any of FINAL_STATES).
DONE = (JobState.COMPLETED,)
# States `retry` may start again: the final ones.
RETRYABLE = FINAL


def can_transition(old: JobState, new: JobState) -> bool:
    """True if a job may go from ``old`` to ``new``."""
    return new in TRANSITIONS[old]


class Verdict(enum.Enum):
    """What a blocked job's parents say about it."""

    WAIT = "wait"  # a parent is not done yet
    READY = "ready"  # every parent is done as it had to be
    CANCEL = "cancel"  # a parent it needed completed ended dead or cancelled


def dependency_verdict(parents: Sequence[Parent]) -> tuple[Verdict, str | None]:
    """The verdict on a blocked job with these parents, and the reason for a cancel."""
    for parent in parents:
        if not parent.any_outcome and parent.state in FAILED_PARENT:
            return Verdict.CANCEL, f"parent job {parent.id!r} ended {parent.state.value}"
    for parent in parents:
        done = parent.state in FINAL_STATES if parent.any_outcome else parent.state in DONE
        if not done:
            return Verdict.WAIT, None
    return Verdict.READY, None


def find_cycle(parents: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in the graph of job -> its parents (``[a, b, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for parent in parents.get(node, ()):
            if state.get(parent) == 1:
                return [*path[path.index(parent) :], parent]
            if parent not in state and (found := visit(parent)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in parents:
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


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
    after: tuple[str, ...] = ()  # parents that must complete
    after_any: tuple[str, ...] = ()  # parents that must only be final

    @property
    def parents(self) -> tuple[str, ...]:
        return (*self.after, *self.after_any)

    @classmethod
    def from_args(
        cls,
        args: EnqueueArgs,
        now: float,
        owner_uid: int | None,
        *,
        job_id: str | None = None,
        after_any: tuple[str, ...] = (),
    ) -> NewJob:
        """The job an enqueue request asks for (``job_id``, ``after_any``: a schedule's)."""
        run_at = now + args.delay if args.delay else args.run_at
        return cls(
            command=args.command,
            id=job_id or args.id,
            max_retries=args.max_retries,
            timeout=args.timeout,
            run_at=run_at if run_at is not None and run_at > now else None,  # the past is now
            cwd=args.cwd,
            owner_uid=owner_uid,
            idempotent=args.idempotent,
            priority=args.priority,
            queue=args.queue,
            unique_key=args.unique_key,
            env=dict(args.env or {}),
            backoff_base=args.backoff_base,
            backoff_max=args.backoff_max,
            jitter=args.jitter,
            memory=args.memory_bytes(),
            cpus=args.cpus,
            max_procs=args.max_procs,
            after=tuple(args.after or ()),
            after_any=tuple(args.after_any or ()) + after_any,
        )


@dataclass(frozen=True)
class Parent:
    """One of a job's parents, as the child sees it."""

    id: str
    state: JobState
    exit_code: int | None
    any_outcome: bool  # `after_any`: any final state lets the child run

    def view(self) -> ParentView:
        return ParentView(
            id=self.id,
            state=self.state.value,
            exit_code=self.exit_code,
            any_outcome=self.any_outcome,
        )


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
    node: str | None = None  # the daemon that ran it (its log file is on that host)

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
    n_parents: int = 0  # how many parents it has (loaded below only where needed)
    parents: tuple[Parent, ...] = field(default=())
    children: tuple[str, ...] = field(default=())

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
            parents=[p.view() for p in self.parents],
            children=list(self.children),
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
