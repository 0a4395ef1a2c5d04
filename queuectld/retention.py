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


class Retention:
    """Purges what the configuration says is old enough, every ``retention_every`` s."""

    def __init__(
        self,
        committer: Committer,
        log_dir: str,
        policy: Callable[[], dict[str, float]],
        every: Callable[[], float],
    ) -> None:
        self._committer = committer
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
