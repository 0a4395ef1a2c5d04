"""Full disks: the store or the log directory on a small tmpfs that the test fills.

Mounting needs root; CI runs as root, so a failed mount fails the test (it is not
skipped). Enqueue then answers ``storage_full`` (exit 1 from the CLI), stores nothing
of what it refused, the daemon keeps serving reads, a running job's outcome is
recorded once space returns, and everything works again after the filler is removed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queuectl.errors import StorageFull
from tests.chaos.chaoslib import DaemonProcess, wait_drained, wait_until


@pytest.fixture
def small_fs() -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs filesystems (e.g. ``small_fs("2m")``); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix="qc-fs-"))
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"cannot mount a tmpfs (run as root): {result.stderr}"
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        with contextlib.suppress(OSError):
            path.rmdir()


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last block; return the filler file."""
    filler = directory / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=16k"], capture_output=True, check=False
    )
    # dd stops at the first short write; top up in smaller pieces to the very end.
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
    try:
        for size in (4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def stored_ids(daemon: DaemonProcess) -> set[str]:
    with daemon.client() as c:
        return {j["id"] for j in c.list_jobs(limit=100_000)[0]}


def test_store_on_a_full_disk(
    make_daemon: Callable[..., DaemonProcess], small_fs: Callable[[str], Path]
) -> None:
    fs = small_fs("2m")
    daemon = make_daemon(env={"QUEUECTLD_DATABASE": str(fs / "queue.db")})
    daemon.start()
    with daemon.client() as c:
        for i in range(20):
            c.enqueue("true", id=f"before{i}", delay=86400)
    filler = fill(fs)

    # Enqueue until the store refuses: with the disk full it must, with storage_full.
    refused_batch: list[str] = []
    accepted: list[str] = []
    with daemon.client() as c:
        for b in range(200):
            batch = [{"id": f"b{b}-{i}", "command": "echo " + "x" * 2000} for i in range(20)]
            try:
                accepted += c.enqueue_batch(batch)
            except StorageFull as exc:
                assert "full" in exc.message
                refused_batch = [str(s["id"]) for s in batch]
                break
        else:
            pytest.fail("the store never reported storage_full")
        # Reads still work on a full disk.
        counts = c.status()["counts"]
        assert (counts["waiting"], counts["pending"]) == (20, len(accepted))
    # Through the CLI: exit status 1 and one clear sentence.
    big = "echo " + "y" * 60_000
    result = daemon.cli("enqueue", "--id", "cli-full", "--", big)
    assert result.returncode == 1, result
    assert b"full" in result.stderr and b"Traceback" not in result.stderr
    # Nothing refused was stored, not even in part; everything acknowledged was.
    ids = stored_ids(daemon)
    assert not set(refused_batch) & ids
    assert "cli-full" not in ids
    assert {f"before{i}" for i in range(20)} | set(accepted) <= ids
    assert daemon.alive()

    # Space returns: the daemon recovers without a restart.
    filler.unlink()
    with daemon.client() as c:
        c.enqueue_batch([{"id": i, "command": "true"} for i in refused_batch])
        c.enqueue("true", id="after")
    assert set(refused_batch) | {"after"} <= stored_ids(daemon)
    # And what was stored survives a restart intact.
    daemon.kill()
    daemon.start()
    with daemon.client() as c:
        assert c.get_job("after")["state"] in ("pending", "processing", "completed")
    assert set(refused_batch) | set(accepted) | {"after"} <= stored_ids(daemon)


def test_running_job_outcome_is_recorded_after_space_returns(
    make_daemon: Callable[..., DaemonProcess], small_fs: Callable[[str], Path], scratch: Path
) -> None:
    fs = small_fs("2m")
    daemon = make_daemon(
        env={"QUEUECTLD_DATABASE": str(fs / "queue.db"), "QUEUECTLD_SAFETY_POLL": "0.3"}
    )
    daemon.start()
    marker = scratch / "started"
    with daemon.client() as c:
        c.set_workers(1)
        c.enqueue(f"touch {marker}; sleep 1; echo done", id="running")
    wait_until(marker.exists, 10, "the job to start")
    filler = fill(fs)
    # Push the store to refuse writes, so the result has to wait for space.
    with daemon.client() as c:
        for b in range(200):
            try:
                c.enqueue_batch([{"id": f"f{b}-{i}", "command": "x" * 2000} for i in range(20)])
            except StorageFull:
                break
        time.sleep(1.5)  # the job ends while the disk is full
        state = c.get_job("running")["state"]
        assert state in ("processing", "completed"), state  # never lost, never dead
    filler.unlink()
    with daemon.client() as c:
        c.stop_workers()
        job = wait_until(
            lambda: (j := c.get_job("running"))["state"] == "completed" and j, 20, "the result"
        )
    outcomes = [a["outcome"] for a in job["history"]]
    assert outcomes.count("completed") == 1 and outcomes[-1] == "completed", outcomes


def test_log_directory_on_a_full_disk(
    make_daemon: Callable[..., DaemonProcess], small_fs: Callable[[str], Path]
) -> None:
    logs = small_fs("1m")
    daemon = make_daemon(env={"QUEUECTLD_LOG_DIR": str(logs)})
    daemon.start()
    filler = fill(logs)
    with daemon.client() as c:
        c.set_workers(1)
        c.enqueue("echo hello", id="unlogged")
    wait_drained(daemon, 20)
    with daemon.client() as c:
        job = c.get_job("unlogged")
        assert job["state"] == "completed"  # the job ran; only its log could not be kept
        assert "job log not written" in (job["history"][-1]["error"] or "")
        filler.unlink()
        c.enqueue("echo again", id="logged")
    wait_drained(daemon, 20)
    assert b"again" in (logs / "job_logged.txt").read_bytes()
