"""Crash campaigns: SIGKILL the daemon, its workers and its jobs at random moments.

Each job appends its id to a side-effect file, under ``flock -n`` on a per-job lock:
a second copy of the job running while the first still holds the lock writes the id
to an ``overlap`` file instead, so "never twice at once" is checked by the jobs
themselves. After the final drain :func:`chaoslib.check_ledger` compares the store
(every job completed or dead exactly once, each attempt closed, at most one
completion) with the side effects (a job ran more often than it was charged only if
an interruption or a kill is recorded in its history).

The daemon-kill campaigns run on both stores (``store_env``: ``[sqlite]``,
``[postgres]``): what a kill tests there is the store's side (leases, recovery by
node, commits). The worker, job and executor campaigns hurt processes the store never
sees, so they stay on SQLite, which keeps the suite's time in budget.

Set CHAOS_SEED to replay a campaign.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from queuectl.errors import Conflict, QueuectlError, Unavailable
from tests.chaos.chaoslib import (
    ChaosOptions,
    DaemonProcess,
    check_ledger,
    side_effects,
    wait_drained,
    wait_until,
)


def _seed() -> int:
    return int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))


def job_command(work: Path, job_id: str, body: str = "", fail: str = "", prefix: str = "") -> str:
    """``echo ID >> side`` (then ``body``) under a per-job flock; ``fail`` decides the exit."""
    inner = f"echo {job_id} >> {work}/side{body}{fail}"
    return (
        f"{prefix}flock -n -E 75 {work}/locks/{job_id} sh -c '{inner}'; rc=$?; "
        f"[ $rc -ne 75 ] || echo {job_id} >> {work}/overlap; exit $rc"
    )


def campaign_jobs(work: Path, count: int) -> list[dict[str, object]]:
    """Mostly succeeding jobs; every 10th always fails (-> dead), every 10th+1 fails once."""
    (work / "locks").mkdir(parents=True, exist_ok=True)
    (work / "marks").mkdir(exist_ok=True)
    specs: list[dict[str, object]] = []
    for i in range(count):
        job_id = f"j{i:05d}"
        if i % 10 == 0:
            fail = "; exit 3"
        elif i % 10 == 1:
            fail = f"; [ -e {work}/marks/{job_id} ] || {{ : > {work}/marks/{job_id}; exit 1; }}"
        else:
            fail = ""
        specs.append({"id": job_id, "command": job_command(work, job_id, fail=fail)})
    return specs


def assert_no_overlap(work: Path) -> None:
    overlap = work / "overlap"
    text = overlap.read_text() if overlap.exists() else ""
    assert not text, f"jobs ran twice at once: {sorted(set(text.split()))[:10]}"


def _configure(daemon: DaemonProcess, workers: int, **settings: str) -> None:
    with daemon.client() as c:
        for key, value in settings.items():
            c.config_set(key.replace("_", "-"), value)
        c.set_workers(workers)


def _submit(daemon: DaemonProcess, batches: list[list[dict[str, object]]], acked: set[str]) -> None:
    """Enqueue batches until done or the daemon dies; an unanswered batch stays queued.

    A batch re-sent after a crash may already be stored (committed, then the daemon
    died before answering): the daemon refuses it whole as a duplicate, and every id
    of it must then be there.
    """
    try:
        with daemon.client(timeout=10) as c:
            while batches:
                batch = batches[0]
                try:
                    ids = c.enqueue_batch(batch)
                except Conflict:
                    ids = [str(spec["id"]) for spec in batch]
                    for job_id in ids:
                        assert c.get_job(job_id)["id"] == job_id
                assert ids == [spec["id"] for spec in batch]
                acked.update(ids)
                batches.pop(0)
    except (Unavailable, OSError):
        pass  # killed under us: the batch is re-sent next round


def test_daemon_sigkill_campaign(
    store_env: dict[str, str],
    make_daemon: Callable[..., DaemonProcess],
    scratch: Path,
    chaos_options: ChaosOptions,
    report: Callable[[str], None],
) -> None:
    """2,000+ jobs, 4 workers, failures and retries; the daemon is SIGKILLed every round."""
    seed = _seed()
    rng = random.Random(seed)
    rounds, total = chaos_options.rounds, chaos_options.jobs
    work = scratch / "work"
    specs = campaign_jobs(work, total)
    per_round = -(-total // rounds)
    daemon = make_daemon(env={"QUEUECTLD_KILL_GRACE": "1", **store_env})
    daemon.start()
    _configure(daemon, 4, max_retries="2", backoff_base="1", backoff_max="0.2")
    acked: set[str] = set()
    waiting: list[list[dict[str, object]]] = []
    started = time.monotonic()
    for r in range(rounds):
        if not daemon.alive():
            daemon.start()
        chunk = specs[r * per_round : (r + 1) * per_round]
        waiting += [chunk[i : i + 25] for i in range(0, len(chunk), 25)]
        killer = threading.Timer(rng.uniform(0.0, 1.0), daemon.kill)
        killer.start()
        _submit(daemon, waiting, acked)
        killer.join()
    daemon.start()
    _submit(daemon, waiting, acked)
    assert not waiting and acked == {s["id"] for s in specs}
    final = wait_drained(daemon, timeout=120 + total / 20)
    assert_no_overlap(work)
    with daemon.client() as c:
        ledger = check_ledger(c, acked, side_effects(work / "side"))
    assert daemon.stop() == 0
    assert ledger["lost"] == 0 and final["processing"] == 0
    report(
        f"seed={seed} rounds={rounds} daemon_kills={daemon.kills} jobs={ledger['jobs']} "
        f"completed={ledger['completed']} dead={ledger['dead']} "
        f"executions={ledger['executions']} interrupted_attempts="
        f"{ledger['interrupted_attempts']} duplicates={ledger['duplicate_executions']} "
        f"(jobs run again: {ledger['jobs_run_twice']}) lost=0 overlaps=0 "
        f"in {time.monotonic() - started:.1f}s"
    )


def test_worker_and_job_sigkill_campaign(
    make_daemon: Callable[..., DaemonProcess],
    scratch: Path,
    chaos_options: ChaosOptions,
    report: Callable[[str], None],
) -> None:
    """SIGKILL single worker processes and whole job process groups while jobs run."""
    seed = _seed()
    rng = random.Random(seed)
    work = scratch / "work"
    (work / "locks").mkdir(parents=True)
    total = 800 if not chaos_options.long else 4000
    specs = [
        {"id": f"k{i:05d}", "command": job_command(work, f"k{i:05d}", body="; sleep 0.03")}
        for i in range(total)
    ]
    daemon = make_daemon(env={"QUEUECTLD_KILL_GRACE": "1"})
    daemon.start()
    # Job-group kills are charged (outcome "signaled"); allow enough retries that a job
    # hit a few times still completes, and enough interruptions for worker kills.
    _configure(
        daemon,
        4,
        max_retries="5",
        backoff_base="1",
        backoff_max="0.1",
        max_interruptions="50",
    )
    with daemon.client() as c:
        c.enqueue_batch(specs)
    worker_kills = group_kills = 0
    # The supervisor backs off respawning when workers keep dying (a crash loop): kill
    # one worker every 1-1.5 s so the campaign keeps most of the four running.
    next_worker_kill = time.monotonic() + 0.5
    killed_workers: set[int] = set()
    with daemon.client() as c:
        while True:
            counts = c.status()["counts"]
            if counts["pending"] + counts["processing"] + counts["failed"] == 0:
                break
            time.sleep(rng.uniform(0.02, 0.15))
            if time.monotonic() >= next_worker_kill:
                workers = daemon.executors()
                if workers:
                    victim = rng.choice(workers)
                    os.kill(victim, signal.SIGKILL)
                    killed_workers.add(victim)
                    worker_kills += 1
                next_worker_kill = time.monotonic() + rng.uniform(1.0, 1.5)
            else:
                groups = daemon.job_groups()
                if groups:
                    try:
                        os.killpg(rng.choice(groups), signal.SIGKILL)
                        group_kills += 1
                    except ProcessLookupError:
                        pass
    wait_drained(daemon, timeout=60)
    assert_no_overlap(work)
    with daemon.client() as c:
        ledger = check_ledger(c, {str(s["id"]) for s in specs}, side_effects(work / "side"))
        histories = [c.get_job(str(s["id"]))["history"] for s in specs]
    outcomes = [a for h in histories for a in h]
    lost_to_worker = [a for a in outcomes if a["outcome"] == "interrupted"]
    signaled = [a for a in outcomes if a["outcome"] == "signaled"]
    assert worker_kills >= 3 and group_kills >= 10, (worker_kills, group_kills)
    assert lost_to_worker and all("exited with code -9" in a["error"] for a in lost_to_worker)
    assert signaled and all("signal 9" in a["error"] for a in signaled)
    # A killed worker's job group was ended too: nothing of a killed worker survives.
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in killed_workers), 5, "reap")
    assert daemon.stop() == 0
    report(
        f"seed={seed} jobs={ledger['jobs']} worker_kills={worker_kills} "
        f"job_group_kills={group_kills} interrupted={len(lost_to_worker)} "
        f"signaled={len(signaled)} completed={ledger['completed']} dead={ledger['dead']} "
        f"duplicates={ledger['duplicate_executions']} lost=0 overlaps=0"
    )


def test_daemon_kill_never_runs_a_job_twice_at_once(
    store_env: dict[str, str],
    make_daemon: Callable[..., DaemonProcess],
    scratch: Path,
    report: Callable[[str], None],
) -> None:
    """A job that ignores SIGTERM is running when the daemon is SIGKILLed and restarted
    at once: its old copy must be gone before the new daemon runs it again."""
    work = scratch / "work"
    (work / "locks").mkdir(parents=True)
    # The default kill grace (5 s) is longer than the job: if the orphaned worker only
    # sent SIGTERM and waited, the old copy would still hold the lock at the re-run.
    daemon = make_daemon(env=store_env)
    daemon.start()
    _configure(daemon, 2)
    ids = ["slow1", "slow2"]
    with daemon.client() as c:
        for job_id in ids:
            command = job_command(work, job_id, body="; sleep 3", prefix="trap '' TERM; ")
            c.enqueue(command, id=job_id)
    wait_until(lambda: len(side_effects(work / "side")) == 2, 10, "both jobs to start")
    daemon.kill()
    daemon.start()
    wait_drained(daemon, timeout=30)
    assert_no_overlap(work)
    with daemon.client() as c:
        ledger = check_ledger(c, set(ids), side_effects(work / "side"))
    assert ledger["completed"] == 2 and ledger["interrupted_attempts"] == 2
    report(f"jobs={len(ids)} reruns={ledger['duplicate_executions']} overlaps=0")


def test_enqueue_with_conflict_after_crash_is_all_or_nothing(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """A batch is stored whole or not at all: after kills mid-batch, no partial batch."""
    daemon = make_daemon()
    rng = random.Random(_seed())
    batches = [[{"id": f"b{b}-{i}", "command": "true"} for i in range(200)] for b in range(30)]
    for _ in range(5):
        daemon.start()
        killer = threading.Timer(rng.uniform(0.0, 0.3), daemon.kill)
        killer.start()
        try:
            with daemon.client(timeout=10) as c:
                for batch in batches:
                    try:
                        c.enqueue_batch(batch)
                    except Conflict:
                        pass
        except (QueuectlError, OSError):
            pass
        killer.join()
    daemon.start()
    with daemon.client() as c:
        stored = {j["id"] for j in c.list_jobs(limit=100_000)[0]}
    for batch in batches:
        present = {s["id"] for s in batch} & stored
        assert len(present) in (0, len(batch)), f"partial batch stored: {len(present)}"


def _all_gone(pids: frozenset[int]) -> bool:
    return not any(os.path.exists(f"/proc/{p}") for p in pids)


def test_executor_sigkill_campaign(
    make_daemon: Callable[..., DaemonProcess],
    scratch: Path,
    chaos_options: ChaosOptions,
    report: Callable[[str], None],
) -> None:
    """SIGKILL the one executor while about 50 jobs run in it, round after round.

    Every job ends completed exactly once, extra runs only where an interruption is
    recorded, no two copies of a job at once (``flock -n``), and no job group of a
    killed executor left behind.
    """
    seed = _seed()
    rng = random.Random(seed)
    work = scratch / "work"
    (work / "locks").mkdir(parents=True)
    rounds = 5 if not chaos_options.long else 30
    # About 6 s a round (an executor must outlive the crash-loop window to be replaced
    # at once) at 50 jobs of 3 s each: enough work that 50 run whenever one is killed.
    total = 110 * rounds + 100
    specs = [
        {"id": f"x{i:05d}", "command": job_command(work, f"x{i:05d}", body="; sleep 3")}
        for i in range(total)
    ]
    daemon = make_daemon(env={"QUEUECTLD_EXECUTORS": "1", "QUEUECTLD_KILL_GRACE": "1"})
    daemon.start()
    _configure(daemon, 50, max_retries="0", max_interruptions="50")
    with daemon.client() as c:
        c.enqueue_batch(specs)
    kills = 0
    killed_groups: set[int] = set()
    first_seen: dict[int, float] = {}
    deadline = time.monotonic() + 60 * rounds
    while kills < rounds and time.monotonic() < deadline:
        (executor,) = wait_until(lambda: daemon.executors(), 30, "an executor")
        first_seen.setdefault(executor, time.monotonic())
        groups = daemon.job_groups()
        if len(groups) < 40 or time.monotonic() - first_seen[executor] < 5.5:
            time.sleep(rng.uniform(0.05, 0.2))
            continue
        killed_groups |= set(groups)
        os.kill(executor, signal.SIGKILL)
        kills += 1
        # Every job group of the dead executor is gone before its jobs run again.
        wait_until(functools.partial(_all_gone, frozenset(killed_groups)), 10, "the groups to die")
    assert kills == rounds, f"only {kills} of {rounds} rounds had 40 jobs running"
    wait_drained(daemon, timeout=180)
    assert_no_overlap(work)
    with daemon.client() as c:
        ledger = check_ledger(c, {str(s["id"]) for s in specs}, side_effects(work / "side"))
        histories = [c.get_job(str(s["id"]))["history"] for s in specs]
    interrupted = [a for h in histories for a in h if a["outcome"] == "interrupted"]
    assert ledger["completed"] == total, ledger
    assert len(interrupted) >= 40 * rounds, len(interrupted)
    assert all("exited with code -9" in a["error"] for a in interrupted)
    assert daemon.stop() == 0
    report(
        f"seed={seed} jobs={total} executor_kills={kills} interrupted={len(interrupted)} "
        f"duplicates={ledger['duplicate_executions']} lost=0 overlaps=0"
    )
