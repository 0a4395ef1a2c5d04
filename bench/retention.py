"""Retention: what purging costs, and what it costs a draining queue.

``python -m bench.retention [--jobs 100000] [--drain 4000] [--reps 3]`` prints one JSON
object:

* ``purge``: 100,000 completed jobs (rows, attempts, a 300-byte log file each) purged
  by :func:`queuectld.retention.purge` through the daemon's committer, beside the
  baseline of storing the same 100,000 jobs in the same store (one transaction per
  10,000, as ``enqueue --file`` does); then the file size and a ``vacuum``.
* ``drain``: 4 workers drain ``--drain`` jobs of ``true``, with retention off and with
  retention purging 50,000 old completed jobs (and the drain's own jobs, 2 s after
  they complete) meanwhile; rounds interleaved, the ratio taken within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.core import temp_dir
from bench.qc import Daemon, counts
from queuectl.protocol import JobState
from queuectld.committer import Committer
from queuectld.jobs import AttemptResult, NewJob
from queuectld.retention import purge
from queuectld.store.sqlite import SQLiteStore

BATCH = 10_000


def populate(db: Path, log_dir: Path | None, n: int, at: float) -> float:
    """``n`` completed jobs last changed at ``at`` (and their log files); seconds spent
    storing them (inserted, claimed and finished, 10,000 a transaction)."""
    store = SQLiteStore(db)
    store.open()
    spent = 0.0
    try:
        for start in range(0, n, BATCH):
            size = min(BATCH, n - start)
            t0 = time.perf_counter()
            with store.transaction():
                store.insert_jobs([NewJob("true") for _ in range(size)], at)
            spent += time.perf_counter() - t0
            with store.transaction():
                claims = store.claim_due("bench", size, at, 10.0, 1.0)
                store.finish_attempts(
                    [
                        AttemptResult(
                            job_id=c.job.id,
                            attempt=c.attempt,
                            lease_token=c.lease_token,
                            outcome="completed",
                            exit_code=0,
                            error=None,
                            started_at=at,
                            finished_at=at,
                            next_state=JobState.COMPLETED,
                            attempts=1,
                            interruptions=0,
                            run_at=at,
                        )
                        for c in claims
                    ]
                )
            if log_dir is not None:
                log_dir.mkdir(exist_ok=True)
                for c in claims:
                    (log_dir / f"job_{c.job.id}.txt").write_bytes(b"x" * 300)
    finally:
        store.close()
    return spent


async def _purge(db: Path, log_dir: Path) -> tuple[float, int]:
    store = SQLiteStore(db)
    store.open()
    committer = Committer(store, asyncio.get_running_loop())
    committer.start()
    try:
        t0 = time.perf_counter()
        done = await purge(committer, str(log_dir), JobState.COMPLETED, time.time(), None)
        took = time.perf_counter() - t0
    finally:
        await committer.stop()  # closing checkpoints the WAL into the file
    return took, done["jobs"]


def purge_cost(n: int) -> dict[str, Any]:
    with temp_dir("retention") as home:
        db, logs = home / "queue.db", home / "logs"
        stored = populate(db, logs, n, time.time() - 86400)
        before = os.stat(db).st_size  # populate closed the store: the WAL is checkpointed
        took, purged = asyncio.run(_purge(db, logs))
        after = os.stat(db).st_size
        if purged != n or any(logs.iterdir()):
            raise RuntimeError(f"purged {purged} of {n}, or log files are left")
        store = SQLiteStore(db)
        store.open()
        t0 = time.perf_counter()
        store.compact()
        vacuum = time.perf_counter() - t0
        store.close()
    return {
        "jobs": n,
        "purge_s": round(took, 3),
        "purge_us_per_job": round(took / n * 1e6, 1),
        "store_s": round(stored, 3),
        "purge_vs_store": round(took / stored, 2),
        "db_bytes_before": before,
        "db_bytes_after_purge": after,
        "vacuum_after_s": round(vacuum, 3),
    }


def drain_once(jobs: int, old: int, retention: bool) -> tuple[float, int]:
    """Jobs/s of a 4-worker drain, and how many jobs retention purged meanwhile."""
    with temp_dir("retention-drain") as home:
        built = time.time()
        populate(home / "queue.db", home / "logs", old, built)
        env = {"QUEUECTLD_RETENTION_EVERY": "1", "QUEUECTLD_RETENTION_CANCELLED": "off"}
        env["QUEUECTLD_RETENTION_COMPLETED"] = "2s" if retention else "off"
        d = Daemon(home, 0, env)
        try:
            with d.client() as c:
                for start in range(0, jobs, BATCH):
                    c.enqueue_batch([{"command": "true"}] * min(BATCH, jobs - start))
                # The old jobs become due for retention as the drain starts.
                while time.time() < built + 2.0:
                    time.sleep(0.01)
                t0 = time.perf_counter()
                c.set_workers(4)
                while True:
                    now = counts(c)
                    if now["pending"] + now["processing"] == 0:
                        break
                    time.sleep(0.005)
                elapsed = time.perf_counter() - t0
                left = counts(c)["completed"]
        finally:
            d.stop()
        if retention and left >= old + jobs:
            raise RuntimeError("retention did not run during the drain")
    return jobs / elapsed, old + jobs - left


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retention")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=4000)
    parser.add_argument("--old", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    out: dict[str, Any] = {"purge": purge_cost(args.jobs)}
    if not args.reps:
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    off, on, ratios, purged = [], [], [], []
    for _ in range(args.reps):
        a, _ = drain_once(args.drain, args.old, False)
        b, n = drain_once(args.drain, args.old, True)
        off.append(a)
        on.append(b)
        purged.append(n)
        ratios.append(b / a)
    out["drain"] = {
        "jobs": args.drain,
        "old_jobs": args.old,
        "purged_during_drain": purged,
        "workers": 4,
        "off_jobs_per_s": [round(x) for x in off],
        "on_jobs_per_s": [round(x) for x in on],
        "median_ratio_on_vs_off": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
