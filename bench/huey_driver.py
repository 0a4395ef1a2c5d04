"""huey's side of the comparison; runs under the peer's own interpreter (bench/.peers/huey).

Usage: python huey_driver.py (drain N | enqueue N | pickup N) DIR

Prints one JSON object. The queue is huey's SqliteHuey with ``fsync=True``
(``PRAGMA synchronous=FULL``, like queuectl), one task that runs ``sh -c COMMAND``, and
a consumer with two worker threads (``-k thread -w 2``: faster than
worker processes here).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

TASKS = """
import os, subprocess
from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"], fsync=True)


@huey.task()
def sh(command):
    return subprocess.run(["/bin/sh", "-c", command]).returncode
"""


def setup(directory: str) -> None:
    with open(os.path.join(directory, "bench_tasks.py"), "w") as fh:
        fh.write(TASKS)
    os.environ["BENCH_HUEY_DB"] = os.path.join(directory, "huey.db")
    sys.path.insert(0, directory)


def consumer(directory: str, delay: str) -> subprocess.Popen[bytes]:
    """huey's consumer: 2 worker threads; ``delay`` is its polling interval when idle."""
    exe = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
    cmd = [exe, "bench_tasks.huey", "-k", "thread", "-w", "2", "-q", "-C"]
    cmd += ["-d", delay, "-m", delay, "-b", "1"]
    return subprocess.Popen(
        cmd,
        cwd=directory,
        env={**os.environ, "PYTHONPATH": directory},
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(directory, "consumer.log"), "ab"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def results(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM kv WHERE queue = 'bench'").fetchone()[0])


def drain(n: int, directory: str) -> dict[str, float]:
    from bench_tasks import sh  # type: ignore[import-not-found]

    for _ in range(n):
        sh("true")
    db = sqlite3.connect(os.environ["BENCH_HUEY_DB"], isolation_level=None)
    t0 = time.perf_counter()
    proc = consumer(directory, "0.1")
    try:
        while results(db) < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
    finally:
        stop(proc)
    return {"jobs_per_s": n / elapsed, "jobs": n}


def enqueue(n: int, directory: str) -> dict[str, float]:
    from bench_tasks import sh

    sh("true")  # open the connection and create the tables first
    t0 = time.perf_counter()
    for _ in range(n):
        sh("true")
    return {"jobs_per_s": n / (time.perf_counter() - t0), "jobs": n}


def _time_open(fifo: str, stamp: list[float]) -> None:
    fd = os.open(fifo, os.O_RDONLY)  # returns when the task's shell opens it for writing
    stamp.append(time.perf_counter())
    os.close(fd)


def pickup(n: int, directory: str) -> dict[str, float]:
    """Latency from the enqueue call to the task's shell opening a FIFO (consumer idle)."""
    from bench_tasks import sh

    fifo = os.path.join(directory, "started.fifo")
    os.mkfifo(fifo)
    db = sqlite3.connect(os.environ["BENCH_HUEY_DB"], isolation_level=None)
    sh("true")
    proc = consumer(directory, "0.01")
    lat: list[float] = []
    try:
        while results(db) < 1:
            time.sleep(0.01)
        for i in range(n):
            stamp: list[float] = []

            thread = threading.Thread(target=_time_open, args=(fifo, stamp))
            thread.start()
            time.sleep(0.002)
            t0 = time.perf_counter()
            sh(f": > {fifo}")
            thread.join(10.0)
            if not stamp:
                raise RuntimeError("a pickup task did not start within 10 s")
            lat.append((stamp[0] - t0) * 1000)
            while results(db) < i + 2:
                time.sleep(0.002)
            time.sleep(0.005)
    finally:
        stop(proc)
    lat.sort()
    return {
        "p50_ms": lat[(50 * len(lat) + 99) // 100 - 1],
        "p95_ms": lat[(95 * len(lat) + 99) // 100 - 1],
        "samples": len(lat),
    }


def main() -> int:
    mode, n, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    setup(directory)
    result = {"drain": drain, "enqueue": enqueue, "pickup": pickup}[mode](n, directory)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
