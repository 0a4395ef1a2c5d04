"""Acknowledged means durable: a job whose enqueue was answered survives a SIGKILL at once.

The reply is sent only after the transaction holding the job is committed (SQLite
WAL, ``synchronous=FULL``), so killing the daemon the instant the reply arrives must
never lose the job. Group commit keeps this cheap; the throughput test reports the
numbers with durability on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.chaos.chaoslib import ChaosOptions, DaemonProcess


def test_acknowledged_enqueue_survives_sigkill(
    make_daemon: Callable[..., DaemonProcess],
    chaos_options: ChaosOptions,
    report: Callable[[str], None],
) -> None:
    """Enqueue, SIGKILL on the reply, restart: the job is there, every time."""
    daemon = make_daemon()
    reps = chaos_options.ack_reps
    acked: list[str] = []
    started = time.monotonic()
    for rep in range(reps):
        daemon.start()
        with daemon.client() as c:
            # Everything acknowledged before any earlier kill is still there.
            if acked:
                assert c.get_job(acked[-1])["id"] == acked[-1]
            if rep % 2 == 0:
                job = c.enqueue("true", id=f"ack{rep}")
                ids = [job["id"]]
            else:
                ids = c.enqueue_batch(
                    [{"id": f"ack{rep}-{i}", "command": "true"} for i in range(5)]
                )
            os.kill(daemon.pid, signal.SIGKILL)  # the instant the reply is in
        daemon.proc.wait()  # type: ignore[union-attr]
        daemon.kills += 1
        acked += ids
    daemon.start()
    with daemon.client() as c:
        stored = {j["id"] for j in c.list_jobs(limit=100_000)[0]}
    missing = [i for i in acked if i not in stored]
    assert not missing, f"{len(missing)} acknowledged enqueues lost: {missing[:10]}"
    report(
        f"repetitions={reps} acknowledged_jobs={len(acked)} kills={daemon.kills} lost=0 "
        f"in {time.monotonic() - started:.1f}s"
    )


def test_store_is_opened_durable(tmp_path: Path) -> None:
    """The promise rests on two pragmas: WAL and synchronous=FULL (2)."""
    from queuectld.store import open_store
    from queuectld.store.sqlite import SQLiteStore

    store = open_store(str(tmp_path / "q.db"))
    try:
        assert isinstance(store, SQLiteStore)
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        store.close()


def _enqueue_many(socket_path: str, prefix: str, count: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from queuectl.client import Client

    with Client.connect(socket_path, autostart=False) as c:
        c.ping()
        started = time.monotonic()
        for i in range(count):
            c.enqueue("true", id=f"{prefix}{i}")
        out.put(time.monotonic() - started)


def test_enqueue_throughput_with_durability(
    make_daemon: Callable[..., DaemonProcess], report: Callable[[str], None]
) -> None:
    """Single enqueues from one and from 8 clients, and batches; every one durable."""
    daemon = make_daemon()
    daemon.start()
    with daemon.client() as c:
        tx0 = c.metrics()["store_transactions"]
        n1 = 300
        t = time.monotonic()
        for i in range(n1):
            c.enqueue("true", id=f"one{i}")
        one_rate = n1 / (time.monotonic() - t)
        tx1 = c.metrics()["store_transactions"]

    clients, per_client = 8, 250
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_enqueue_many, args=(str(daemon.socket), f"p{n}-", per_client, out))
        for n in range(clients)
    ]
    t = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    wall = time.monotonic() - t
    many_rate = clients * per_client / wall

    with daemon.client() as c:
        tx2 = c.metrics()["store_transactions"]
        batches, size = 10, 1000
        t = time.monotonic()
        for b in range(batches):
            c.enqueue_batch([{"id": f"b{b}-{i}", "command": "true"} for i in range(size)])
        batch_rate = batches * size / (time.monotonic() - t)
        total = c.status()["counts"]["pending"]
    assert total == n1 + clients * per_client + batches * size
    per_tx = clients * per_client / max(1, tx2 - tx1)
    report(
        f"durable enqueue: 1 client {one_rate:.0f} jobs/s ({(tx1 - tx0)} commits for {n1}); "
        f"{clients} clients {many_rate:.0f} jobs/s ({per_tx:.1f} enqueues per commit); "
        f"batches of {size}: {batch_rate:.0f} jobs/s"
    )
