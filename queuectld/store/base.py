"""The store interface: every read and write of queue state goes through these methods.

Implementations (SQLite now, PostgreSQL later) must pass the same contract suite in
``tests/store/``. All methods run on the daemon's single store thread and must be
called inside :meth:`Store.transaction`; driver errors are turned into
:mod:`queuectl.errors` types before they leave the implementation.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from queuectl.errors import Conflict, InvalidRequest, NotFound
from queuectl.protocol import FINAL_STATES, JobState, SortKey
from queuectld import queues
from queuectld.jobs import (
    CANCELLABLE,
    RETRYABLE,
    AttemptResult,
    Claim,
    Job,
    NewJob,
    Parent,
    Verdict,
    dependency_verdict,
    find_cycle,
)
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


@dataclass(frozen=True)
class Settled:
    """Blocked jobs that the end of their parents decided: ready (``pending``, or
    ``waiting`` for their own time) or ``cancelled`` (transitively)."""

    unblocked: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)

    def __add__(self, other: Settled) -> Settled:
        return Settled(self.unblocked + other.unblocked, self.cancelled + other.cancelled)


@dataclass(frozen=True)
class Finished:
    """What :meth:`Store.finish_attempts` did: which results it recorded, and what their
    jobs' ends decided for the jobs waiting on them."""

    ok: list[bool]
    settled: Settled


@dataclass(frozen=True)
class Purged:
    """Jobs :meth:`Store.purge_jobs` removed (or would remove), and where it stopped."""

    ids: list[str]
    after_at: float  # the (updated_at, seq) position to go on from
    after_seq: int


@dataclass(frozen=True)
class ScheduleRow:
    """One stored schedule (see :mod:`queuectld.scheduler`)."""

    name: str
    cron: str
    tz: str
    job: str  # JSON of the enqueue request each tick makes
    overlap: str
    catch_up: str
    paused: bool
    owner_uid: int | None
    created_at: float
    next_at: float
    last_at: float | None = None
    last_job: str | None = None


@dataclass(frozen=True)
class NodeRow:
    """One daemon of the cluster, as it registered itself (several share a PostgreSQL
    store; a SQLite store has one)."""

    name: str  # its node_id: the lease owner of every job it runs
    host: str  # the machine it runs on
    pid: int
    started_at: float  # this start of it (a restart registers again)
    heartbeat_at: float
    slots: int  # jobs it may run at once (its worker count)
    socket: str  # its control socket: job logs are fetched through it
    stopped_at: float | None = None  # set by a clean stop
    rescued_at: float | None = None  # set when a survivor took its jobs back
    running: int = 0  # processing jobs it holds (filled in by Store.nodes)

    def state(self, now: float, timeout: float) -> str:
        """``stopped`` (cleanly), ``gone`` (rescued, or no heartbeat for ``timeout``
        seconds) or ``live``."""
        if self.stopped_at is not None:
            return "stopped"
        if self.rescued_at is not None or now - self.heartbeat_at >= timeout:
            return "gone"
        return "live"


class WakeupSource(Protocol):
    """Tells the daemon that another user of the store may have made work for it."""

    async def run(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` at each such event, until cancelled. Reconnects by itself after a
        failure (logging one line), and calls ``wake`` after each reconnect, since events
        may have been missed meanwhile."""


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

    def insert_jobs(self, jobs: Sequence[NewJob], now: float) -> list[Job]:
        """Add jobs as ``pending`` (``waiting`` when their ``run_at`` is after ``now``);
        ids are generated where missing.

        A job with parents (``after``, ``after_any``: ids in the store, or of jobs
        earlier or later in ``jobs``) is ``blocked`` until they are done, and settled at
        once when they already are (:meth:`settle`). A parent that does not exist raises
        ``NotFound``, parents that wait on each other raise ``InvalidRequest``.

        A job whose ``unique_key`` an unfinished job (pending, waiting, blocked,
        processing, failed) already holds, in the store or earlier in ``jobs``, is not
        stored: that job is returned in its place (see :meth:`insert_unique`). Raises
        ``Conflict`` naming the first id that already exists (or repeats in ``jobs``).
        Whatever it raises, nothing of the call is kept.
        """
        return self.insert_unique(jobs, now).jobs

    def insert_unique(self, jobs: Sequence[NewJob], now: float) -> Inserted:
        """:meth:`insert_jobs`, saying which of the returned jobs were already there."""
        self._check_parents(jobs)
        keys = [new.unique_key for new in jobs if new.unique_key is not None]
        before = {job.unique_key: job.id for job in self.unfinished_with_keys(keys)}
        out = self.add_jobs(jobs, now)
        seen: set[str] = set()
        existing = []
        for new in jobs:
            key = new.unique_key
            existing.append(key is not None and (key in before or key in seen))
            if key is not None:
                seen.add(key)
        children = [
            (job.id, new)
            for job, new, old in zip(out, jobs, existing, strict=True)
            if new.parents and not old
        ]
        if children:
            self.add_dependencies(children)
            ids = [job_id for job_id, _ in children]
            self.settle(ids, now)
            fresh, parents = self.get_jobs(ids), self.parents_of(ids)
            out = [
                dataclasses.replace(fresh[job.id], parents=parents.get(job.id, ()))
                if job.id in fresh
                else job
                for job in out
            ]
        return Inserted(out, existing)

    def _check_parents(self, jobs: Sequence[NewJob]) -> None:
        """Refuse parents that do not exist and parents that wait on each other."""
        in_batch = {new.id: new.parents for new in jobs if new.id is not None}
        named = {p for new in jobs for p in new.parents if p not in in_batch}
        known = self.get_jobs(sorted(named)) if named else {}
        for i, new in enumerate(jobs, 1):
            for parent in new.parents:
                if parent not in in_batch and parent not in known:
                    who = f"job {new.id!r}" if new.id else f"job {i}"
                    raise NotFound(
                        f"{who} waits on job {parent!r}, which does not exist; "
                        "enqueue the parent first (or earlier in the same request)"
                    )
        cycle = find_cycle(in_batch)
        if cycle is not None:
            raise InvalidRequest(
                f"jobs {' -> '.join(repr(j) for j in cycle)} wait on each other; "
                "none of them could ever run"
            )

    @abc.abstractmethod
    def add_jobs(self, jobs: Sequence[NewJob], now: float) -> list[Job]:
        """The rows of :meth:`insert_jobs` (jobs with parents ``blocked``, ``n_parents``
        set), without their dependencies."""

    @abc.abstractmethod
    def add_dependencies(self, children: Sequence[tuple[str, NewJob]]) -> None:
        """Store the parents of each (stored child id, its request) pair, in order."""

    @abc.abstractmethod
    def parents_of(self, ids: Sequence[str]) -> dict[str, tuple[Parent, ...]]:
        """The parents of each of these jobs that has any, in the order given."""

    @abc.abstractmethod
    def children_of(self, job_id: str) -> list[str]:
        """The ids of the jobs waiting on (or that waited on) ``job_id``."""

    @abc.abstractmethod
    def blocked_children(self, ids: Sequence[str]) -> list[str]:
        """The ``blocked`` children of these jobs."""

    @abc.abstractmethod
    def unblock_jobs(self, ids: Sequence[str], now: float) -> list[Job]:
        """Make these ``blocked`` jobs ``pending`` (``waiting`` if their ``run_at`` is
        after ``now``); the jobs changed."""

    @abc.abstractmethod
    def block_jobs(self, ids: Sequence[str]) -> list[str]:
        """Make these ``pending`` jobs that have parents ``blocked``; their ids."""

    def settle(self, ids: Sequence[str], now: float) -> Settled:
        """Decide blocked jobs by their parents' states (``jobs.dependency_verdict``):
        unblock the ready ones, cancel with the reason the ones a failed parent dooms, and
        so on down to their own children."""
        parents = self.parents_of(ids)
        ready: list[str] = []
        doomed: dict[str, list[str]] = {}
        for job_id in ids:
            verdict, reason = dependency_verdict(parents.get(job_id, ()))
            if verdict is Verdict.READY:
                ready.append(job_id)
            elif verdict is Verdict.CANCEL and reason is not None:
                doomed.setdefault(reason, []).append(job_id)
        out = Settled(self.unblock_jobs(ready, now) if ready else [], [])
        for reason, group in doomed.items():
            cancelled = self.mark_cancelled(group, now, reason)
            out += Settled([], cancelled) + self.settle_children([j.id for j in cancelled], now)
        return out

    def settle_children(self, ids: Sequence[str], now: float) -> Settled:
        """After these jobs became final: settle the blocked jobs that wait on them."""
        children = self.blocked_children(ids) if ids else []
        return self.settle(children, now) if children else Settled()

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
        # Limits first: a shared store locks the limited queues there, so the counts read
        # next already include what other hosts claimed from them.
        limits = self.queue_limits()
        counts = self.count_by_queue()
        allowed = queues.allowances(limits, counts, limit, now)
        if not allowed:
            return []
        claims = self.claim_from_queues(owner, allowed, limit, now, default_timeout, lease_margin)
        for name, n in collections.Counter(c.job.queue for c in claims).items():
            queue = limits.get(name)
            if queue is not None and queue.rate_count is not None:
                self.set_tokens(name, queue.tokens_now(now) - n, now)
        children = [c.job.id for c in claims if c.job.n_parents]
        if children:  # what the job's environment says about its parents
            parents = self.parents_of(children)
            claims = [
                dataclasses.replace(c, job=dataclasses.replace(c.job, parents=parents[c.job.id]))
                if c.job.id in parents
                else c
                for c in claims
            ]
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

    def finish_attempts(self, results: Sequence[AttemptResult]) -> Finished:
        """Record the end of several attempts and move each job to its ``next_state``;
        then settle the blocked jobs waiting on the jobs that became final, in the same
        transaction (:meth:`settle_children`).

        A ``next_state`` that :data:`~queuectld.jobs.TRANSITIONS` does not allow after
        ``processing`` is a programming error: it raises and changes nothing.

        For each result, ``False`` (and nothing changed for it) when the job no longer
        holds ``result.lease_token`` (its lease was taken back): a late result is
        refused, so an attempt is never recorded twice. A ``started_at`` of ``None``
        keeps the start recorded when the attempt was claimed. Without children to
        settle, the cost is a constant number of statements, however many results.
        """
        ok = self.record_attempts(results)
        final = [
            r.job_id
            for r, done in zip(results, ok, strict=True)
            if done and r.next_state in FINAL_STATES
        ]
        now = max((r.finished_at for r in results), default=0.0)
        return Finished(ok, self.settle_children(final, now))

    @abc.abstractmethod
    def record_attempts(self, results: Sequence[AttemptResult]) -> list[bool]:
        """The updates of :meth:`finish_attempts`, before any child is settled."""

    def finish_attempt(self, result: AttemptResult) -> bool:
        """:meth:`finish_attempts` for one result."""
        return self.finish_attempts([result]).ok[0]

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
        jobs = self.restart_jobs(ids, now, states)
        blocked = self.block_jobs([j.id for j in jobs if j.n_parents])
        if blocked:
            # A retried child waits for its parents again; one whose parent failed and
            # is not retried with it would only be cancelled again: refused.
            settled = self.settle(blocked, now)
            if settled.cancelled:
                job = settled.cancelled[0]
                raise Conflict(
                    f"job {job.id!r} cannot run again: its {job.last_error}; retry the "
                    "parent first, or with it"
                )
            fresh = self.get_jobs(ids)
            jobs = [fresh.get(j.id, j) for j in jobs]
        return jobs

    @abc.abstractmethod
    def restart_jobs(self, ids: Sequence[str], now: float, states: Sequence[JobState]) -> list[Job]:
        """The update of :meth:`retry_jobs`, for ids known to be in ``states``."""

    def cancel_jobs(self, ids: Sequence[str], now: float, reason: str) -> list[Job]:
        """End jobs that have not started (pending, waiting, blocked, failed) as
        ``cancelled``, with ``reason`` as their last error; the jobs waiting on them are
        settled (:meth:`settle_children`). Returns the cancelled jobs, those named first,
        then their dependents cancelled with them (each with its own reason).

        All or nothing: raises ``NotFound`` for an unknown id and ``Conflict`` naming
        the state of a job that cannot be cancelled; then nothing changed.
        """
        self._require_states(ids, CANCELLABLE, "cancelled")
        cancelled = self.mark_cancelled(ids, now, reason)
        return cancelled + self.settle_children(ids, now).cancelled

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

    # -- retention ------------------------------------------------------------

    @abc.abstractmethod
    def purge_jobs(
        self,
        state: JobState,
        before: float,
        queue: str | None,
        limit: int,
        after: tuple[float, int] = (float("-inf"), -1),
        dry_run: bool = False,
    ) -> Purged:
        """Delete (or with ``dry_run`` only find) up to ``limit`` jobs in ``state`` (a
        final one) last changed before ``before``, of ``queue`` or all, oldest first,
        starting after the position ``after``, with their attempts and dependency rows.

        A job that an unfinished job waits on is kept. Uses an index on
        (state, updated_at): each batch costs the same, however many jobs there are.
        """

    @abc.abstractmethod
    def release_space(self) -> None:
        """Give the file's free pages back to the file system where the store can do
        so inside a transaction (SQLite: ``incremental_vacuum``); else nothing."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """The disk the store takes now (SQLite: the file; PostgreSQL: its schema's
        tables with their indexes), for `queuectl vacuum` to report."""

    def sweep_dead_rows(self) -> bool:
        """Remove dead row versions when the database has let too many pile up
        (PostgreSQL with autovacuum off or behind); whether it did. Runs on a connection
        of its own, outside any transaction, from any thread; nothing to do on SQLite."""
        return False

    @abc.abstractmethod
    def compact(self) -> None:
        """Rebuild the store to its smallest size. Runs outside any transaction (the
        only such method); may take a while and block every other store call."""

    # -- schedules --------------------------------------------------------------

    @abc.abstractmethod
    def schedules(self) -> list[ScheduleRow]:
        """Every schedule, by name."""

    @abc.abstractmethod
    def get_schedule(self, name: str) -> ScheduleRow | None:
        """One schedule; ``None`` if unknown."""

    @abc.abstractmethod
    def put_schedule(self, row: ScheduleRow, replace: bool) -> None:
        """Add a schedule; with ``replace``, change the one of that name (its history
        stays). Raises ``Conflict`` if it exists and not ``replace``, ``NotFound`` if it
        does not and ``replace``."""

    @abc.abstractmethod
    def delete_schedule(self, name: str) -> bool:
        """Remove a schedule (its jobs stay); False if there was none."""

    @abc.abstractmethod
    def set_schedule_paused(self, name: str, paused: bool, next_at: float) -> bool:
        """Pause or resume a schedule, with the next tick it handles; False if unknown."""

    @abc.abstractmethod
    def schedule_progress(
        self, name: str, next_at: float, last_at: float | None, last_job: str | None
    ) -> None:
        """Record that a schedule handled its ticks up to ``next_at`` (exclusive); a
        tick that made a job sets ``last_at``/``last_job`` (``None`` keeps them)."""

    @abc.abstractmethod
    def next_schedule_at(self) -> float | None:
        """The earliest ``next_at`` of a schedule that is not paused."""

    # -- cluster membership ---------------------------------------------------

    @abc.abstractmethod
    def register_node(self, node: NodeRow) -> NodeRow | None:
        """Record ``node`` as running: insert its row, or replace the row of that name
        (``stopped_at``/``rescued_at`` cleared). Returns the row it replaced, if any."""

    @abc.abstractmethod
    def heartbeat_node(self, name: str, started_at: float, now: float, slots: int) -> bool:
        """Record that the node ``name`` started at ``started_at`` is alive with
        ``slots``. ``False`` (nothing changed) when the row of ``name`` belongs to
        another start, or was rescued: another daemon took over the name or its jobs."""

    @abc.abstractmethod
    def stop_node(self, name: str, started_at: float, now: float) -> None:
        """Mark the node ``name`` (of that start) as stopped cleanly."""

    @abc.abstractmethod
    def nodes(self) -> list[NodeRow]:
        """Every registered node, by name, with the count of jobs each holds now."""

    @abc.abstractmethod
    def take_dead_nodes(self, stale_before: float, now: float) -> list[NodeRow]:
        """Take on the rescue of the nodes whose last heartbeat is before
        ``stale_before`` and that neither stopped nor were rescued: mark them rescued at
        ``now`` and return them. Two callers (two daemons) never get the same node."""

    def wakeup_source(self) -> WakeupSource | None:
        """Events from other users of the store (PostgreSQL LISTEN/NOTIFY); ``None``
        when the daemon is its only user (SQLite)."""
        return None

    def describe(self) -> str:
        """Where the store is, for logs and errors (no password)."""
        return type(self).__name__

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
