"""queuectl under measurement: its own temporary home and daemon for every run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.core import (
    children_of,
    percentile,
    rss_kb,
    stop_process,
    temp_dir,
    wait_for,
)
from queuectl.client import Client

BIN = Path(sys.executable).parent


class Daemon:
    """``queuectld --home DIR`` in the foreground, logging to DIR/queuectld.log."""

    def __init__(self, home: Path, workers: int = 0, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.socket = str(home / "queuectld.sock")
        self.env = {**os.environ, "QUEUECTL_HOME": str(home), "QUEUECTL_NO_AUTOSTART": "1"}
        self.env.update(env or {})
        self.env.pop("QUEUECTL_SOCKET", None)
        self._log = open(home / "queuectld.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "queuectld", "--home", str(home), "--workers", str(workers)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=self.env,
            start_new_session=True,
        )
        if not wait_for(self._answers, timeout=30.0, interval=0.005):
            self.stop()
            raise RuntimeError(f"queuectld did not start; see {home / 'queuectld.log'}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"queuectld exited with {self.proc.returncode}: "
                + (self.home / "queuectld.log").read_text()[-2000:]
            )
        try:
            Client.connect(self.socket, autostart=False, timeout=5.0).close()
        except Exception:
            return False
        return True

    def client(self) -> Client:
        return Client.connect(self.socket, autostart=False, timeout=120.0)

    def wait_workers(self, client: Client, count: int, timeout: float = 30.0) -> None:
        def ready() -> bool:
            w = client.status()["workers"]
            return w["running"] == count and w["busy"] == 0

        if not wait_for(ready, timeout):
            raise RuntimeError(f"{count} workers did not become ready")

    def worker_pids(self) -> list[int]:
        return children_of(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception), self.client() as c:
                c.shutdown()
        stop_process(self.proc, timeout=30.0)
        self._log.close()


@contextlib.contextmanager
def daemon(workers: int = 0, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A daemon on a fresh home; ``env`` adds variables (``QUEUECTLD_<KEY>`` settings)."""
    with temp_dir("queuectl") as home:
        d = Daemon(home, workers, env)
        try:
            yield d
        finally:
            d.stop()


def counts(client: Client) -> dict[str, int]:
    return dict(client.status()["counts"])


def _enqueue_true(client: Client, n: int) -> None:
    spec = {"command": "true"}
    left = n
    while left:
        chunk = min(left, 10_000)
        client.enqueue_batch([spec] * chunk)
        left -= chunk


def drain(n: int, poll: float = 0.005, env: dict[str, str] | None = None) -> float:
    """Jobs/s: ``n`` jobs of ``true`` queued with no worker, then 2 workers until all finished.

    ``env`` adds daemon settings: ``{"QUEUECTLD_CGROUP": "off"}`` measures the same drain
    without a cgroup per attempt (process groups only), for the cost of containment.
    """
    with daemon(workers=0, env=env) as d, d.client() as c:
        _enqueue_true(c, n)
        if counts(c)["pending"] != n:
            raise RuntimeError("jobs were not all pending before the drain")
        t0 = time.perf_counter()
        c.set_workers(2)
        while True:
            done = counts(c)
            if done["completed"] + done["failed"] + done["dead"] >= n:
                break
            time.sleep(poll)
        elapsed = time.perf_counter() - t0
        if done["completed"] != n:
            raise RuntimeError(f"drain finished with {done}")
    return n / elapsed


def batch_enqueue(n: int = 10_000) -> float:
    """Jobs/s for one ``enqueue_batch`` request of ``n`` jobs, answered once durable."""
    specs = [{"command": f"echo {i}"} for i in range(n)]
    with daemon(workers=0) as d, d.client() as c:
        c.enqueue_batch([{"command": "true"}])  # warm the connection and the store
        t0 = time.perf_counter()
        ids = c.enqueue_batch(specs)
        elapsed = time.perf_counter() - t0
        if len(ids) != n:
            raise RuntimeError("batch enqueue returned the wrong number of ids")
    return n / elapsed


def cli_command() -> list[str]:
    """One ``queuectl enqueue`` as a user types it (the console script of this interpreter)."""
    return [str(BIN / "queuectl"), "enqueue", "--", "true"]


def idle_rss(d: Daemon, client: Client) -> dict[str, float]:
    """Resident memory (MiB) of the idle daemon and its 2 workers: RSS summed, and PSS."""
    d.wait_workers(client, 2)
    time.sleep(0.5)  # let the workers settle after their first frames
    pids = [d.proc.pid, *d.worker_pids()]
    if len(pids) != 3:
        raise RuntimeError(f"expected a daemon and 2 workers, found {pids}")
    sizes = [rss_kb(p) for p in pids]
    return {
        "rss_mb": sum(s[0] for s in sizes) / 1024,
        "pss_mb": sum(s[1] for s in sizes) / 1024,
        "daemon_rss_mb": sizes[0][0] / 1024,
        "worker_rss_mb": max(s[0] for s in sizes[1:]) / 1024,
    }


class FifoClock:
    """Times when a job's shell opens a FIFO: the job ``: > FIFO`` records its own start."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "started.fifo"
        os.mkfifo(self.path)
        self.stamps: list[float] = []
        self._arm = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def command(self) -> str:
        return f": > {self.path}"

    def _run(self) -> None:
        while True:
            self._arm.acquire()
            if self._stop:
                return
            fd = os.open(self.path, os.O_RDONLY)  # blocks until the job opens it for writing
            self.stamps.append(time.perf_counter())
            os.close(fd)
            self._done.release()

    def arm(self) -> None:
        self._arm.release()
        time.sleep(0.002)  # the reader is blocked in open() before the job is sent

    def wait(self, timeout: float = 10.0) -> float | None:
        if not self._done.acquire(timeout=timeout):
            return None
        return self.stamps[-1]

    def close(self) -> None:
        self._stop = True
        self._arm.release()
        # Unblock a reader still waiting in open().
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


def pickup(samples: int = 100) -> dict[str, float]:
    """Idle pickup latency (ms): from sending an enqueue to the job's shell starting."""
    with daemon(workers=2) as d, d.client() as c:
        d.wait_workers(c, 2)
        clock = FifoClock(d.home)
        lat: list[float] = []
        try:
            for _ in range(samples):
                clock.arm()
                t0 = time.perf_counter()
                c.enqueue_spec({"command": clock.command})
                t1 = clock.wait()
                if t1 is None:
                    raise RuntimeError("a pickup job did not start within 10 s")
                lat.append((t1 - t0) * 1000)
                # Let the job finish and the worker go idle again before the next sample.
                d.wait_workers(c, 2, timeout=10.0)
                time.sleep(0.005)
        finally:
            clock.close()
    return {"p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "samples": len(lat)}


CLAIM_QUEUES = ("default", "mail", "reports", "etl")


def build_store(path: Path, pending: int) -> None:
    """A queue database holding ``pending`` jobs (made through the store itself), spread
    over four queues and 21 priorities, one in ten delayed by a day: the claim's index
    holds every part of its order."""
    from queuectld.jobs import NewJob
    from queuectld.store.sqlite import SQLiteStore

    store = SQLiteStore(path)
    store.open()
    try:
        now = time.time()
        for start in range(0, pending, 10_000):
            batch = [
                NewJob(
                    "true",
                    id=f"j{i}",
                    queue=CLAIM_QUEUES[i % len(CLAIM_QUEUES)],
                    priority=i % 21 - 10,
                    run_at=now + 86400 if i % 10 == 9 else None,
                )
                for i in range(start, min(pending, start + 10_000))
            ]
            with store.transaction():
                store.insert_jobs(batch, now)
    finally:
        store.close()


def claim_cost(path: Path, rounds: int = 20, per_round: int = 50) -> float:
    """Microseconds per claim (``claim_due`` of one job), inside a transaction rolled back.

    The commit (one fsync, the same at any queue size) is left out: this is the index
    lookup and the row updates whose cost must not grow with the number of waiting jobs.
    """
    from queuectld.store.sqlite import SQLiteStore

    store = SQLiteStore(path)
    store.open()
    try:
        db = store.db
        now = time.time()
        total = 0.0
        for _ in range(rounds):
            db.execute("BEGIN IMMEDIATE")
            t0 = time.perf_counter()
            for _ in range(per_round):
                if not store.claim_due("bench", 1, now, 10.0, 35.0):
                    raise RuntimeError("no job left to claim")
            total += time.perf_counter() - t0
            db.execute("ROLLBACK")
    finally:
        store.close()
    return total / (rounds * per_round) * 1e6


def one_process(cmd: list[str], env: dict[str, str]) -> float:
    """Milliseconds for one command to run to its end."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.decode(errors='replace')[:200]}")
    return elapsed
