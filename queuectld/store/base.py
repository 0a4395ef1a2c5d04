"""The store interface: every read and write of queue state goes through these methods.

Implementations (SQLite now, PostgreSQL later) must pass the same contract suite in
``tests/store/``. All methods run on the daemon's single store thread and must be
called inside :meth:`Store.transaction`; driver errors are turned into
:mod:`queuectl.errors` types before they leave the implementation.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from queuectl.errors import Conflict, NotFound
from queuectl.protocol import JobState, SortKey
from queuectld import queues
from queuectld.jobs import CANCELLABLE, RETRYABLE, AttemptResult, Claim, Job, NewJob
from queuectld.queues import QueueLimits


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing shows; ``None`` fields match every job."""

    state: JobState | None = None
    queue: str | None = None
    owner_uid: int | None = None
    since: float | None = None  # created at or after this Unix time
    sort: SortKey = SortKey.OLDEST


@dataclass(frozen=True)
class Inserted:
    """What an enqueue stored: each job, and whether it was already there (unique key)."""

    jobs: list[Job]
    existing: list[bool]


class Store(abc.ABC):
    """Durable queue state. One instance, one thread, one owner (the daemon)."""

    @abc.abstractmethod
    def open(self) -> None:
        """Connect, create the schema or migrate it to the current version."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; later calls are errors."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """One durable transaction: committed (and synced) on normal exit, rolled back on error."""

    @abc.abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """A nested unit inside :meth:`transaction` that an error rolls back alone."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version recorded in the store."""

    # -- jobs -----------------------------------------------------------------

    @abc.abstractmethod
    def insert_jobs(self, jobs: Sequence[NewJob], now: float) -> list[Job]:
        """Add jobs as ``pending`` (``waiting`` when their ``run_at`` is after ``now``);
        ids are generated where missing.

        A job whose ``unique_key`` an unfinished job (pending, waiting, processing,
        failed) already holds, in the store or earlier in ``jobs``, is not stored: that
        job is returned in its place (see :meth:`insert_unique`). Raises ``Conflict``
        naming the first id that already exists (or repeats in ``jobs``); then nothing of
        the call is kept.
        """

    def insert_unique(self, jobs: Sequence[NewJob], now: float) -> Inserted:
        """:meth:`insert_jobs`, saying which of the returned jobs were already there."""
        keys = [new.unique_key for new in jobs if new.unique_key is not None]
        before = {job.unique_key: job.id for job in self.unfinished_with_keys(keys)}
        out = self.insert_jobs(jobs, now)
        seen: set[str] = set()
        existing = []
        for new in jobs:
            key = new.unique_key
            existing.append(key is not None and (key in before or key in seen))
            if key is not None:
                seen.add(key)
        return Inserted(out, existing)

    @abc.abstractmethod
    def unfinished_with_keys(self, keys: Sequence[str]) -> list[Job]:
        """The unfinished jobs holding any of these unique keys (at most one per key)."""

    @abc.abstractmethod
    def get_job(self, job_id: str, with_history: bool = False) -> Job | None:
        """One job, optionally with its attempts history; ``None`` if unknown."""

    @abc.abstractmethod
    def get_jobs(self, ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of these ids that exist, by id (no history)."""

    def list_jobs(
        self, state: JobState | None, limit: int, offset: int, owner_uid: int | None = None
    ) -> list[Job]:
        """Jobs (of one state, or all; of one owner, or everyone's) in enqueue order."""
        return self.find_jobs(JobFilter(state=state, owner_uid=owner_uid), limit, offset)

    @abc.abstractmethod
    def find_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        """Jobs matching ``where``, in its sort order (ties in enqueue order)."""

    @abc.abstractmethod
    def count_jobs(self, where: JobFilter) -> int:
        """How many jobs match ``where``."""

    def count_by_state(self, owner_uid: int | None = None) -> dict[JobState, int]:
        """How many jobs (of one owner, or all) are in each state, zeros included."""
        counts = {s: 0 for s in JobState}
        for by_state in self.count_by_queue(owner_uid).values():
            for state, n in by_state.items():
                counts[state] += n
        return counts

    @abc.abstractmethod
    def count_by_queue(self, owner_uid: int | None = None) -> dict[str, dict[JobState, int]]:
        """Per queue, how many of its jobs (of one owner, or all) are in each state;
        only queues with jobs, only non-zero counts. Costs the same at any queue size
        when ``owner_uid`` is None."""

    def claim_due(
        self, owner: str, limit: int, now: float, default_timeout: float, lease_margin: float
    ) -> list[Claim]:
        """Take up to ``limit`` due jobs: highest priority first, then by the time each
        became due (``run_at``), then in arrival order, within what each queue's limits
        allow (:mod:`queuectld.queues`).

        Waiting and failed jobs whose ``run_at`` has come become ``pending`` first. Each
        claimed job becomes ``processing`` under a fresh lease token owned by ``owner``,
        expiring after its timeout plus ``lease_margin``, and gets a new row in its
        attempts history; a rate-limited queue spends a token per job. Uses indexes: the
        cost must not grow with the number of waiting jobs, and the number of statements
        grows with the number of queues holding ready jobs, never with ``limit``.
        """
        self.promote_due(now)
        counts = self.count_by_queue()
        limits = self.queue_limits()
        allowed = queues.allowances(limits, counts, limit, now)
        if not allowed:
            return []
        claims = self.claim_from_queues(owner, allowed, limit, now, default_timeout, lease_margin)
        for name, n in collections.Counter(c.job.queue for c in claims).items():
            queue = limits.get(name)
            if queue is not None and queue.rate_count is not None:
                self.set_tokens(name, queue.tokens_now(now) - n, now)
        return claims

    @abc.abstractmethod
    def promote_due(self, now: float) -> int:
        """Make ``waiting`` and ``failed`` jobs whose ``run_at`` has come ``pending``;
        how many. Uses an index on ``run_at`` over those two states only."""

    @abc.abstractmethod
    def claim_from_queues(
        self,
        owner: str,
        allowed: dict[str, int],
        limit: int,
        now: float,
        default_timeout: float,
        lease_margin: float,
    ) -> list[Claim]:
        """Claim (as :meth:`claim_due` says) up to ``limit`` pending jobs in claim order,
        at most ``allowed[q]`` of queue ``q`` and none of a queue not in ``allowed``."""

    def next_due_at(self, now: float) -> float | None:
        """When a claim may next find work no claim finds now: the earliest ``run_at`` of
        a waiting or failed job, or the next token of a rate-limited queue with ready
        jobs; ``None`` when there is neither."""
        token_at = queues.next_token_at(self.queue_limits(), self.count_by_queue(), now)
        timed_at = self.next_timed_at()
        times = [t for t in (token_at, timed_at) if t is not None]
        return min(times, default=None)

    @abc.abstractmethod
    def next_timed_at(self) -> float | None:
        """The earliest ``run_at`` of a waiting or failed job."""

    # -- named queues -----------------------------------------------------------

    @abc.abstractmethod
    def queue_limits(self) -> dict[str, QueueLimits]:
        """The settings (and token buckets) of every queue that has any, by name."""

    @abc.abstractmethod
    def set_queue(self, limits: QueueLimits) -> None:
        """Store a queue's settings; a changed rate starts with a full bucket."""

    @abc.abstractmethod
    def set_tokens(self, name: str, tokens: float, now: float) -> None:
        """Record a rate-limited queue's bucket as holding ``tokens`` at ``now``."""

    @abc.abstractmethod
    def finish_attempts(self, results: Sequence[AttemptResult]) -> list[bool]:
        """Record the end of several attempts and move each job to its ``next_state``.

        A ``next_state`` that :data:`~queuectld.jobs.TRANSITIONS` does not allow after
        ``processing`` is a programming error: it raises and changes nothing.

        For each result, ``False`` (and nothing changed for it) when the job no longer
        holds ``result.lease_token`` (its lease was taken back): a late result is
        refused, so an attempt is never recorded twice. A ``started_at`` of ``None``
        keeps the start recorded when the attempt was claimed. The cost is a constant
        number of statements, however many results there are.
        """

    def finish_attempt(self, result: AttemptResult) -> bool:
        """:meth:`finish_attempts` for one result."""
        return self.finish_attempts([result])[0]

    @abc.abstractmethod
    def release_claims(self, claims: Sequence[Claim]) -> list[bool]:
        """Give back claims whose attempts never started (jobs claimed ahead of the slots).

        Each job is ``pending`` again, unleased, and its attempts history loses the row
        the claim added, as if it had never been claimed: nothing is charged. ``False``
        (and nothing changed for it) when the job no longer holds ``claim.lease_token``.
        """

    def release_claim(self, claim: Claim) -> bool:
        """:meth:`release_claims` for one claim."""
        return self.release_claims([claim])[0]

    @abc.abstractmethod
    def leased_jobs(self, owner: str | None, expired_before: float | None) -> list[Claim]:
        """``processing`` jobs leased by ``owner`` (any owner if ``None``), optionally only
        those whose lease expired before ``expired_before``."""

    def retry_dead(self, job_id: str, now: float) -> Job:
        """Move a ``dead`` job back to ``pending`` with its counters reset.

        Raises ``NotFound`` for an unknown id and ``Conflict`` if the job is not dead.
        """
        return self.retry_jobs([job_id], now, (JobState.DEAD,))[0]

    def retry_jobs(
        self, ids: Sequence[str], now: float, states: Sequence[JobState] = RETRYABLE
    ) -> list[Job]:
        """Run finished jobs again: each becomes ``pending`` with its counters reset and
        its attempts history kept.

        All or nothing: raises ``NotFound`` for an unknown id, ``Conflict`` naming the
        state of a job not in ``states``, or naming the unfinished job that holds its
        unique key now; then nothing changed.
        """
        self._require_states(ids, states, "retried")
        return self.restart_jobs(ids, now, states)

    @abc.abstractmethod
    def restart_jobs(self, ids: Sequence[str], now: float, states: Sequence[JobState]) -> list[Job]:
        """The update of :meth:`retry_jobs`, for ids known to be in ``states``."""

    def cancel_jobs(self, ids: Sequence[str], now: float, reason: str) -> list[Job]:
        """End jobs that have not started (pending, waiting, failed) as ``cancelled``,
        with ``reason`` as their last error.

        All or nothing: raises ``NotFound`` for an unknown id and ``Conflict`` naming
        the state of a job that cannot be cancelled; then nothing changed.
        """
        self._require_states(ids, CANCELLABLE, "cancelled")
        return self.mark_cancelled(ids, now, reason)

    @abc.abstractmethod
    def mark_cancelled(self, ids: Sequence[str], now: float, reason: str) -> list[Job]:
        """The update of :meth:`cancel_jobs`, for ids known to be cancellable."""

    def _require_states(self, ids: Sequence[str], states: Sequence[JobState], verb: str) -> None:
        jobs = self.get_jobs(ids)
        for job_id in ids:
            job = jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job with id {job_id!r}")
            if job.state not in states:
                raise Conflict(wrong_state(job, states, verb))

    # -- settings -------------------------------------------------------------

    @abc.abstractmethod
    def get_settings(self) -> dict[str, str]:
        """All stored queue settings (raw strings, parsed by the daemon)."""

    @abc.abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Store one queue setting."""

    # -- metrics --------------------------------------------------------------

    @abc.abstractmethod
    def attempt_stats(self) -> dict[str, float]:
        """Totals over the attempts history: counts per outcome and run-time figures."""

    def iter_all(self, batch: int = 1000) -> Iterator[Job]:
        """Every job, in enqueue order (for tests and export)."""
        offset = 0
        while True:
            page = self.list_jobs(None, batch, offset)
            if not page:
                return
            yield from page
            offset += len(page)


_HINTS = {
    "cancelled": "use `queuectl kill` for a running job",
    "retried": "only finished jobs (completed, dead, cancelled) can be retried",
}


def wrong_state(job: Job, states: Sequence[JobState], verb: str) -> str:
    """One sentence: why ``job`` cannot be ``verb`` in its state, and what to do."""
    if tuple(states) == (JobState.DEAD,):
        return f"job {job.id!r} is {job.state.value}, not dead; only jobs in the DLQ can be retried"
    allowed = ", ".join(s.value for s in states)
    hint = _HINTS.get(verb, f"it must be {allowed}")
    if verb == "cancelled" and job.state is not JobState.PROCESSING:
        hint = f"only {allowed} jobs can be cancelled"
    return f"job {job.id!r} is {job.state.value} and cannot be {verb}; {hint}"
