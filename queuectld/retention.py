"""Purging finished jobs with their log files: `queuectl purge`, and automatic retention.

Both go through :func:`purge`: a batch of jobs a store call (:data:`PURGE_BATCH` for a
purge by hand, :data:`RETENTION_BATCH` for retention; one short transaction each,
through the committer, so enqueues and the dispatcher's cycles get their turn between
two batches), then the batch's log files. Rows go first: a crash
between the two leaves log files without a job, never a job without its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable

import structlog

from queuectl.errors import QueuectlError
from queuectl.protocol import JobState, PurgeView
from queuectld.committer import Committer
from queuectld.store.base import Purged, Store

log = structlog.get_logger("queuectld.retention")

PURGE_BATCH = 200  # `queuectl purge`: a few tens of milliseconds a transaction
RETENTION_BATCH = 50  # automatic retention: a few milliseconds, however busy the queue
# Automatic retention spends at most this share of the store's time: after a batch
# it waits (1 / share - 1) times as long as the batch took, so a draining queue keeps
# its pace (docs/benchmarks.md); a backlog is worked off over a longer time.
RETENTION_SHARE = 0.05
# Log files of jobs another host purged (several daemons share a PostgreSQL store; a
# log stays on the host that ran the job): looked for this often, this many a pass.
ORPHAN_SWEEP_EVERY_S = 3600.0
ORPHAN_SWEEP_BATCH = 500


def remove_logs(log_dir: str, ids: list[str], dry_run: bool) -> int:
    """Remove the log files of these jobs (or only measure them); bytes freed."""
    freed = 0
    for job_id in ids:
        path = os.path.join(log_dir, f"job_{job_id}.txt")
        try:
            freed += os.stat(path).st_blocks * 512
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            continue
    return freed


async def purge(
    committer: Committer,
    log_dir: str,
    state: JobState,
    before: float,
    queue: str | None,
    dry_run: bool = False,
    share: float = 1.0,
    batch: int = PURGE_BATCH,
) -> PurgeView:
    """Remove every job in ``state`` last changed before ``before`` (of ``queue``), batch
    by batch; how many, and the disk their log files held. With ``share`` below 1, it
    pauses between batches so that it takes about that share of the time."""
    after = (float("-inf"), -1)
    jobs = freed = 0
    while True:
        started = time.monotonic()
        purged = await committer.call(
            functools.partial(_batch, state, before, queue, after, dry_run, batch)
        )
        if not purged.ids:
            break
        freed += await asyncio.to_thread(remove_logs, log_dir, purged.ids, dry_run)
        jobs += len(purged.ids)
        after = (purged.after_at, purged.after_seq)
        if share < 1.0:
            await asyncio.sleep((time.monotonic() - started) * (1.0 / share - 1.0))
    return PurgeView(jobs=jobs, bytes_freed=freed, dry_run=dry_run)


def _batch(
    state: JobState,
    before: float,
    queue: str | None,
    after: tuple[float, int],
    dry_run: bool,
    batch: int,
    s: Store,
) -> Purged:
    out = s.purge_jobs(state, before, queue, batch, after, dry_run)
    if not out.ids and not dry_run:
        # Once, at the end: giving pages back moves pages from the end of the file, a
        # cost that grows with the file, too much to pay at every batch.
        s.release_space()
    return out


def old_log_ids(log_dir: str, before: float) -> list[str]:
    """The job ids of the log files in ``log_dir`` last written before ``before``."""
    out: list[str] = []
    try:
        entries = os.scandir(log_dir)
    except OSError:
        return out
    with entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith("job_") and name.endswith(".txt")):
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < before:
                    out.append(name[4:-4])
    return out


async def sweep_orphan_logs(committer: Committer, log_dir: str, before: float) -> int:
    """Remove the log files (older than ``before``) of jobs no longer in the store:
    another daemon of the cluster purged them. How many files went."""
    ids = await asyncio.to_thread(old_log_ids, log_dir, before)
    removed = 0
    for start in range(0, len(ids), ORPHAN_SWEEP_BATCH):
        chunk = ids[start : start + ORPHAN_SWEEP_BATCH]
        known = await committer.call(functools.partial(_existing, chunk))
        gone = [job_id for job_id in chunk if job_id not in known]
        await asyncio.to_thread(remove_logs, log_dir, gone, False)
        removed += len(gone)
    return removed


def _existing(ids: list[str], s: Store) -> set[str]:
    return set(s.get_jobs(ids))


class Retention:
    """Purges what the configuration says is old enough, every ``retention_every`` s."""

    def __init__(
        self,
        committer: Committer,
        log_dir: str,
        policy: Callable[[], dict[str, float]],
        every: Callable[[], float],
        shared: bool = False,
    ) -> None:
        self._committer = committer
        # Other daemons purge too (a shared store): their purges leave our logs behind.
        self._shared = shared
        self._swept_at = 0.0
        self._log_dir = log_dir
        self._policy = policy  # read at each pass: a SIGHUP applies at the next one
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task  # ended: cancelled (or failed, and logged as it did)

    async def run_once(self) -> int:
        """One pass over every state with a retention; jobs purged."""
        total = 0
        now = time.time()
        for state, keep in self._policy().items():
            done = await purge(
                self._committer,
                self._log_dir,
                JobState(state),
                now - keep,
                None,
                share=RETENTION_SHARE,
                batch=RETENTION_BATCH,
            )
            if done["jobs"]:
                log.info(
                    "retention_purged",
                    state=state,
                    jobs=done["jobs"],
                    bytes_freed=done["bytes_freed"],
                )
            total += done["jobs"]
        # A store that keeps dead rows until vacuumed is swept once a pass (the store's
        # own connection, off the store thread: claims go on meanwhile).
        if await asyncio.to_thread(self._committer.store.sweep_dead_rows):
            log.info("dead_rows_swept")
        policy = self._policy()
        if self._shared and policy and time.monotonic() - self._swept_at >= ORPHAN_SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            removed = await sweep_orphan_logs(
                self._committer, self._log_dir, now - min(policy.values())
            )
            if removed:
                log.info("orphan_logs_removed", files=removed)
        return total

    async def _run(self) -> None:
        # A maintenance period, not a search for work: nothing waits on it.
        while True:
            try:
                await self.run_once()
            except QueuectlError as exc:
                log.error("retention_failed", error=str(exc))
            except Exception:
                log.exception("retention_failed")
            await asyncio.sleep(self._every())
