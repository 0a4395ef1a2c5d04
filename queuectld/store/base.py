"""The store interface: every read and write of queue state goes through these methods.

Implementations (SQLite now, PostgreSQL later) must pass the same contract suite in
``tests/store/``. All methods run on the daemon's single store thread and must be
called inside :meth:`Store.transaction`; driver errors are turned into
:mod:`queuectl.errors` types before they leave the implementation.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

from queuectl.protocol import JobState
from queuectld.jobs import AttemptResult, Claim, Job, NewJob


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
        """Add jobs as ``pending``; ids are generated where missing.

        Raises ``Conflict`` naming the first id that already exists (or repeats in
        ``jobs``); then nothing of the call is kept.
        """

    @abc.abstractmethod
    def get_job(self, job_id: str, with_history: bool = False) -> Job | None:
        """One job, optionally with its attempts history; ``None`` if unknown."""

    @abc.abstractmethod
    def list_jobs(
        self, state: JobState | None, limit: int, offset: int, owner_uid: int | None = None
    ) -> list[Job]:
        """Jobs (of one state, or all; of one owner, or everyone's) in enqueue order."""

    @abc.abstractmethod
    def count_by_state(self, owner_uid: int | None = None) -> dict[JobState, int]:
        """How many jobs (of one owner, or all) are in each state, zeros included."""

    @abc.abstractmethod
    def claim_due(
        self, owner: str, limit: int, now: float, default_timeout: float, lease_margin: float
    ) -> list[Claim]:
        """Take up to ``limit`` due jobs (pending or failed with ``run_at <= now``), oldest first.

        Each becomes ``processing`` under a fresh lease token owned by ``owner``, expiring
        after its timeout plus ``lease_margin``, and gets a new row in its attempts
        history. Uses an index: the cost must not grow with the number of waiting jobs,
        and the number of statements must not grow with ``limit``.
        """

    @abc.abstractmethod
    def next_due_at(self) -> float | None:
        """The earliest ``run_at`` of a claimable job, or ``None`` when there is none."""

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

    @abc.abstractmethod
    def retry_dead(self, job_id: str, now: float) -> Job:
        """Move a ``dead`` job back to ``pending`` with its counters reset.

        Raises ``NotFound`` for an unknown id and ``Conflict`` if the job is not dead.
        """

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
