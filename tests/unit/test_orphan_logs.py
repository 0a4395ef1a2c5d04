"""A host's log files of jobs another host purged go too (queuectld/retention.py)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from queuectld.committer import Committer
from queuectld.jobs import NewJob
from queuectld.retention import sweep_orphan_logs
from queuectld.store import open_store
from tests.unit.fakes import aio


@aio
async def test_logs_of_jobs_gone_from_the_store_are_removed(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "queue.db"))
    committer = Committer(store, asyncio.get_running_loop())
    committer.start()
    try:
        now = time.time()
        await committer.call(lambda s: s.add_jobs([NewJob(command="true", id="kept")], now))
        logs = tmp_path / "logs"
        logs.mkdir()
        old = now - 3600
        for job_id in ("kept", "purged", "fresh-purged"):
            (logs / f"job_{job_id}.txt").write_text("output\n")
        for job_id in ("kept", "purged"):
            os.utime(logs / f"job_{job_id}.txt", (old, old))
        (logs / "notes.txt").write_text("not a job log\n")
        os.utime(logs / "notes.txt", (old, old))

        removed = await sweep_orphan_logs(committer, str(logs), now - 60)

        assert removed == 1
        # A recent file may belong to a job whose row is not visible yet: kept.
        assert sorted(p.name for p in logs.iterdir()) == [
            "job_fresh-purged.txt",
            "job_kept.txt",
            "notes.txt",
        ]
    finally:
        await committer.stop()
