"""Several ``queuectld`` daemons on one PostgreSQL store, and checks of what they did.

A :class:`Cluster` starts daemons with homes of their own (socket, state, job logs)
and ``node_id`` s ``node0``, ``node1``, ... on one store URL and schema. Its jobs are
cheap shell appends to one shared file (``O_APPEND``: each line is written whole)::

    JOB_ID ATTEMPT DAEMON_HOME

so the test knows, independently of the queue's own bookkeeping, how many times each
job really ran and on which daemon. :meth:`Cluster.check_bookkeeping` then holds the
store's account (one ``completed`` attempt per job) against those runs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from queuectl.errors import StoreUnavailable
from queuectl.protocol import JobState
from queuectld.store import Store, open_store
from tests.harness import QueueDaemon, short_tmpdir, wait_for

T = TypeVar("T")

# Settings of every cluster daemon unless a test says otherwise: a few workers each,
# short drains so teardown is quick.
BASE_SETTINGS: dict[str, Any] = {
    "workers": 8,
    "drain_timeout": 10,
    "kill_grace": 1,
}


@dataclass(frozen=True)
class Run:
    """One execution of a job, as the job itself wrote it down."""

    job_id: str
    attempt: int
    tag: str  # the home of the daemon whose worker ran it


@dataclass
class Bookkeeping:
    """What :meth:`Cluster.check_bookkeeping` found (for the test's report)."""

    jobs: int
    runs: int
    extra_runs: int  # runs beyond one per job (each must match a recorded interruption)
    interruptions: int  # 'interrupted' attempts recorded over all jobs
    runs_by_node: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        nodes = ", ".join(f"{k}={v}" for k, v in sorted(self.runs_by_node.items()))
        return (
            f"{self.jobs} jobs, {self.runs} runs ({self.extra_runs} extra), "
            f"{self.interruptions} interruptions recorded; runs by node: {nodes}"
        )


class Cluster:
    """Daemons sharing one PostgreSQL store (``url`` + ``schema``)."""

    def __init__(
        self,
        url: str,
        schema: str,
        settings: Mapping[str, Any] | None = None,
        report: Callable[[str], None] = print,
    ) -> None:
        self.url = url
        self.report = report  # where the test's measurements go (the cluster report)
        self.schema = schema
        self.root = short_tmpdir("qc-cl-")
        self.runs_path = self.root / "runs"
        self.runs_path.touch()
        self.settings: dict[str, Any] = {
            **BASE_SETTINGS,
            **(settings or {}),
            "store_url": url,
            "store_schema": schema,
        }
        self.daemons: list[QueueDaemon] = []
        self._store: Store | None = None

    # -- daemons ------------------------------------------------------------------

    def add(self, start: bool = True, **overrides: Any) -> QueueDaemon:
        """One more daemon (``node<N>``), started unless ``start`` is False."""
        name = f"node{len(self.daemons)}"
        daemon = QueueDaemon(short_tmpdir("qc-n-"), {**self.settings, "node_id": name, **overrides})
        self.daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    def start(self, n: int, **overrides: Any) -> list[QueueDaemon]:
        """Start ``n`` more daemons."""
        return [self.add(**overrides) for _ in range(n)]

    @staticmethod
    def node_id(daemon: QueueDaemon) -> str:
        return str(daemon.settings["node_id"])

    def node_of_tag(self) -> dict[str, str]:
        """Daemon home (the tag jobs write) -> node id."""
        return {d.tag: self.node_id(d) for d in self.daemons}

    def cleanup(self, failed: bool = False) -> None:
        """Stop every daemon (and what it left), close the store, remove the homes."""
        for d in self.daemons:
            d.cleanup()
            if failed:
                tail = "\n".join(d.stderr_text().splitlines()[-60:])
                print(f"--- {self.node_id(d)} queuectld log ({d.home}, {d.starts} starts) ---")
                print(tail)
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None
        if not os.environ.get("QUEUECTL_TEST_KEEP"):
            for d in self.daemons:
                shutil.rmtree(d.home, ignore_errors=True)
            shutil.rmtree(self.root, ignore_errors=True)

    # -- jobs -----------------------------------------------------------------------

    def job_command(self, extra: str = "") -> str:
        """The shell command of a counted job: append ``ID ATTEMPT HOME`` to the runs file."""
        runs = shlex.quote(str(self.runs_path))
        line = f'echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $QUEUECTL_TEST_TAG" >> {runs}'
        return f"{extra}; {line}" if extra else line

    def enqueue_spread(
        self,
        n: int,
        prefix: str = "j",
        batch: int = 100,
        command: str | None = None,
        via: Sequence[QueueDaemon] | None = None,
    ) -> list[str]:
        """Enqueue ``n`` counted jobs in batches, round-robin through the daemons."""
        targets = list(via or self.daemons)
        cmd = command or self.job_command()
        ids = [f"{prefix}{i:05d}" for i in range(n)]
        clients = [d.client() for d in targets]
        try:
            for k, start in enumerate(range(0, n, batch)):
                specs = [{"command": cmd, "id": i} for i in ids[start : start + batch]]
                clients[k % len(clients)].enqueue_batch(specs)
        finally:
            for c in clients:
                c.close()
        return ids

    def runs(self) -> list[Run]:
        """Every execution the jobs wrote down so far."""
        out = []
        for line in self.runs_path.read_text().splitlines():
            job_id, attempt, tag = line.split(" ", 2)
            out.append(Run(job_id, int(attempt), tag))
        return out

    # -- the store, seen by the test --------------------------------------------------

    @property
    def store(self) -> Store:
        """The test's own connection to the cluster's store (read-only use)."""
        if self._store is None:
            self._store = open_store(self.url, self.schema)
        return self._store

    def read(self, fn: Callable[[Store], T]) -> T:
        """``fn(store)`` in one transaction of the test's own connection."""
        store = self.store
        with store.transaction():
            return fn(store)

    def counts(self) -> dict[str, int] | None:
        """Jobs by state in the store, or ``None`` while the store cannot be reached."""
        try:
            by_state = self.read(lambda s: s.count_by_state())
        except StoreUnavailable:
            return None
        return {state.value: n for state, n in by_state.items() if n}

    def completed(self) -> int:
        """Completed jobs so far (0 while the store cannot be reached)."""
        counts = self.counts()
        return counts.get(JobState.COMPLETED.value, 0) if counts else 0

    def wait_completed(self, at_least: int, timeout: float) -> None:
        """Wait until at least ``at_least`` jobs are completed in the store."""
        wait_for(
            lambda: self.completed() >= at_least,
            timeout=timeout,
            interval=0.1,
            what=f"{at_least} completed jobs (counts now {self.counts()})",
        )

    def wait_drained(self, total: int, timeout: float) -> float:
        """Wait until all ``total`` jobs are completed; the seconds it took."""
        began = time.monotonic()
        self.wait_completed(total, timeout)
        return time.monotonic() - began

    def check_bookkeeping(self, ids: Sequence[str]) -> Bookkeeping:
        """Hold the store's history of every job against the runs the jobs wrote down.

        Each job must be completed with exactly one ``completed`` attempt, every other
        attempt ``interrupted``, and have run at least once and at most once more than
        its recorded interruptions.
        """
        runs = self.runs()
        runs_of = Counter(r.job_id for r in runs)
        tags = self.node_of_tag()
        by_node = Counter(tags.get(r.tag, r.tag) for r in runs)
        problems: list[str] = []
        interruptions = 0
        extra = 0
        jobs = self.read(lambda s: [s.get_job(i, with_history=True) for i in ids])
        for job_id, job in zip(ids, jobs, strict=True):
            if job is None:
                problems.append(f"{job_id}: lost (not in the store)")
                continue
            outcomes = [a.outcome for a in job.history]
            n_completed = outcomes.count("completed")
            n_interrupted = outcomes.count("interrupted")
            interruptions += n_interrupted
            ran = runs_of.get(job_id, 0)
            extra += max(0, ran - 1)
            if job.state is not JobState.COMPLETED:
                problems.append(f"{job_id}: state {job.state.value}, history {outcomes}")
            if n_completed != 1:
                problems.append(f"{job_id}: {n_completed} completed attempts: {outcomes}")
            if n_completed + n_interrupted != len(outcomes):
                problems.append(f"{job_id}: unexpected outcomes {outcomes}")
            if ran == 0:
                problems.append(f"{job_id}: recorded {outcomes} but never ran")
            elif ran > 1 + n_interrupted:
                problems.append(
                    f"{job_id}: ran {ran} times with {n_interrupted} interruptions recorded"
                    f" ({outcomes})"
                )
        unknown = set(runs_of) - set(ids)
        if unknown:
            problems.append(f"runs of jobs never enqueued: {sorted(unknown)[:5]}")
        return Bookkeeping(
            jobs=len(ids),
            runs=len(runs),
            extra_runs=extra,
            interruptions=interruptions,
            runs_by_node=dict(by_node),
            problems=problems,
        )


def assert_bookkeeping(book: Bookkeeping) -> None:
    """Fail with the first problems found, if any."""
    assert not book.problems, (
        f"{len(book.problems)} bookkeeping problems ({book.summary()}):\n"
        + "\n".join(book.problems[:20])
    )


def job_log_exists(daemon: QueueDaemon, job_id: str) -> bool:
    """The job's output log is in that daemon's log directory (logs stay on their host)."""
    return (daemon.log_dir / f"job_{job_id}.txt").exists()


def read_float(path: Path) -> float | None:
    """The number a job wrote to ``path``, once it is there in full."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return float(text)
    except ValueError:
        return None  # written but not yet complete
