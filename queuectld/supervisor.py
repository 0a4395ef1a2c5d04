"""Worker processes as an explicit state machine: spawn, ready, busy, retire, exit, respawn.

The supervisor keeps ``desired`` workers alive. It does not choose jobs (the
dispatcher does) and does not touch the store; it tells the dispatcher when a worker
is ready, when a job finished, and when a worker died holding a job. Starting and
signalling processes goes through :mod:`queuectld.procs` (the ``spawn`` seam), so the
state machine can be driven by tests without forking.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from queuectl.errors import ProtocolError
from queuectl.protocol import (
    CancelJob,
    FrameBuffer,
    JobFinished,
    RevokeJob,
    RunJob,
    pack,
)
from queuectld import procs
from queuectld.jobs import Claim

log = structlog.get_logger("queuectld.supervisor")

# A worker that dies soon after starting is respawned after a growing delay.
RESPAWN_BASE_S = 0.1
RESPAWN_MAX_S = 30.0
CRASH_WINDOW_S = 60.0
# A worker that dies sooner than this after it started counts towards a crash loop; one
# killed later (by its job, by an operator) is simply replaced at once.
SHORT_LIVED_S = 5.0
READ_CHUNK = 65536


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # spawned, waiting for its ready frame
    IDLE = "idle"  # ready for a job
    BUSY = "busy"  # running a job
    RETIRING = "retiring"  # told to exit (its stdin is closed), waiting for it to go
    EXITED = "exited"


TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.RETIRING, WorkerState.EXITED}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.RETIRING, WorkerState.EXITED}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.RETIRING, WorkerState.EXITED}),
    WorkerState.RETIRING: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset(),
}


class WorkerProcess(Protocol):
    """What the supervisor needs of a worker process (asyncio's Process fits)."""

    @property
    def pid(self) -> int: ...

    stdin: Any
    stdout: Any

    async def wait(self) -> int: ...


Spawn = Callable[[], Awaitable[WorkerProcess]]


@dataclass
class Worker:
    """One supervised worker process and the job it holds, if any."""

    name: str
    proc: WorkerProcess
    state: WorkerState = WorkerState.STARTING
    claim: Claim | None = None
    job_pgid: int | None = None
    # Jobs sent ahead to run after ``claim`` (short jobs): not started until it ends.
    queued: list[Claim] = field(default_factory=list)
    revoking: set[str] = field(default_factory=set)  # queued job ids asked back
    retire_after_job: bool = False
    started_at: float = field(default_factory=time.monotonic)
    reader: asyncio.Task[None] | None = None

    def move(self, new: WorkerState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"worker {self.name}: {self.state} -> {new} is not allowed")
        self.state = new


class Supervisor:
    """Keeps ``desired`` worker processes running and reports what they do."""

    def __init__(
        self,
        spawn: Spawn,
        on_ready: Callable[[], None],
        on_finished: Callable[[Worker, Claim, JobFinished], Awaitable[None]],
        on_lost: Callable[[Worker, Claim, str], Awaitable[None]],
    ) -> None:
        self._spawn = spawn
        self._on_ready = on_ready
        self._on_finished = on_finished
        self._on_lost = on_lost
        self.desired = 0
        self.workers: dict[str, Worker] = {}
        self._names = itertools.count(1)
        self._crashes: list[float] = []
        self._respawn_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._changed = asyncio.Event()
        self.queue_tag = ""  # the QUEUECTL_QUEUE value of this daemon's jobs
        # Called with a queued job the worker handed back unstarted (or that it never
        # started because it exited). Jobs are queued on workers only when this is set.
        self.on_revoked: Callable[[Worker, Claim], Awaitable[None]] | None = None

    # -- views ----------------------------------------------------------------

    def idle(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state is WorkerState.IDLE]

    def busy(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state is WorkerState.BUSY]

    def can_queue(self) -> list[Worker]:
        """Busy workers that may take one job queued behind the one they run."""
        if self._stopping or self.on_revoked is None:
            return []
        return [
            w
            for w in self.workers.values()
            if w.state is WorkerState.BUSY and not w.queued and not w.retire_after_job
        ]

    @property
    def running(self) -> int:
        return sum(
            1 for w in self.workers.values() if w.state in (WorkerState.IDLE, WorkerState.BUSY)
        )

    # -- control --------------------------------------------------------------

    async def scale(self, desired: int) -> None:
        """Set the desired count: start workers, or retire idle ones (busy ones finish first)."""
        self.desired = desired
        await self._reconcile()

    async def _reconcile(self) -> None:
        if self._stopping:
            return
        live = [w for w in self.workers.values() if w.state is not WorkerState.RETIRING]
        live = [w for w in live if not w.retire_after_job]
        excess = len(live) - self.desired
        if excess > 0:
            # Retire idle and starting workers before busy ones.
            order = sorted(live, key=lambda w: w.state is WorkerState.BUSY)
            for worker in order[:excess]:
                if worker.state is WorkerState.BUSY:
                    worker.retire_after_job = True
                    for queued in worker.queued:
                        self.revoke(worker, queued)  # only the running job finishes
                else:
                    self._retire(worker)
        elif excess < 0:
            if self._respawn_timer is not None:
                return  # a crash-loop delay is running; it will reconcile again
            for _ in range(-excess):
                await self._start_one()

    async def _start_one(self) -> None:
        name = f"w{next(self._names)}"
        try:
            proc = await self._spawn()
        except OSError as exc:
            log.error("worker_spawn_failed", worker=name, error=str(exc))
            self._note_crash()
            return
        worker = Worker(name=name, proc=proc)
        self.workers[name] = worker
        worker.reader = asyncio.create_task(self._read(worker), name=f"reader-{name}")
        log.debug("worker_spawned", worker=name, pid=proc.pid)

    def _retire(self, worker: Worker) -> None:
        worker.move(WorkerState.RETIRING)
        with contextlib.suppress(Exception):
            worker.proc.stdin.close()  # EOF tells the worker to exit

    def assign(self, worker: Worker, claim: Claim, job: RunJob) -> None:
        """Hand ``claim`` to an idle worker; if the pipe is broken the reader reports it lost.

        Synchronous on purpose: the worker is busy before the dispatcher can look again.
        """
        worker.move(WorkerState.BUSY)
        worker.claim = claim
        worker.job_pgid = None
        try:
            worker.proc.stdin.write(pack(job.to_wire()))
        except (ConnectionError, RuntimeError):
            pass  # the reader task sees the exit and returns the job to the queue

    def queue_next(self, worker: Worker, claim: Claim, job: RunJob) -> None:
        """Send a busy worker ``claim`` to start as soon as its running job ends."""
        worker.queued.append(claim)
        try:
            worker.proc.stdin.write(pack(job.to_wire()))
        except (ConnectionError, RuntimeError):
            pass  # the reader task sees the exit and hands the job back

    def revoke(self, worker: Worker, claim: Claim) -> None:
        """Ask a worker for a queued job back (another worker is idle)."""
        if claim.job.id in worker.revoking:
            return
        worker.revoking.add(claim.job.id)
        with contextlib.suppress(ConnectionError, RuntimeError):
            worker.proc.stdin.write(pack(RevokeJob(claim.job.id).to_wire()))

    def cancel_running(self) -> None:
        """Tell every busy worker to stop its job now (drain deadline passed)."""
        for worker in self.busy():
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.proc.stdin.write(pack(CancelJob().to_wire()))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no worker is busy; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self.busy():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def stop(self, kill_after: float) -> None:
        """Retire every worker and wait for them to exit; kill the ones that do not."""
        self._stopping = True
        if self._respawn_timer is not None:
            self._respawn_timer.cancel()
        for worker in list(self.workers.values()):
            if worker.state not in (WorkerState.RETIRING, WorkerState.EXITED):
                if worker.state is WorkerState.BUSY:
                    worker.retire_after_job = True
                    self.cancel_running()
                else:
                    self._retire(worker)
        readers = [w.reader for w in self.workers.values() if w.reader is not None]
        if not readers:
            return
        _, still = await asyncio.wait(readers, timeout=kill_after)
        if still:
            for worker in list(self.workers.values()):
                log.warning(
                    "worker_killed",
                    worker=worker.name,
                    pid=worker.proc.pid,
                    job_id=worker.claim.job.id if worker.claim else None,
                )
                procs.kill_process(worker.proc.pid, signal.SIGTERM)
            _, still = await asyncio.wait(still, timeout=2.0)
            for worker in list(self.workers.values()):
                procs.kill_process(worker.proc.pid, signal.SIGKILL)
            if still:
                await asyncio.wait(still, timeout=2.0)

    # -- events from a worker --------------------------------------------------

    async def _read(self, worker: Worker) -> None:
        reader = worker.proc.stdout
        frames = FrameBuffer()
        try:
            while True:
                # Read what is there and handle every frame in it: one wake-up for a
                # worker's "finished" and "started" frames when they arrive together.
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                for msg in frames.feed(data):
                    await self._handle(worker, msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.error("worker_protocol_error", worker=worker.name, error=str(exc))
            procs.kill_process(worker.proc.pid)
        except Exception:
            log.exception("worker_reader_failed", worker=worker.name)
            procs.kill_process(worker.proc.pid)
        await self._exited(worker)

    async def _handle(self, worker: Worker, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        if kind == "ready":
            if worker.state is WorkerState.STARTING:
                worker.move(WorkerState.IDLE)
                log.debug("worker_ready", worker=worker.name, pid=worker.proc.pid)
                self._changed.set()
                self._on_ready()
        elif kind == "started":
            worker.job_pgid = int(msg["pgid"])
        elif kind == "revoked":
            job_id = msg.get("job_id")
            for queued in worker.queued:
                if queued.job.id == job_id:
                    worker.queued.remove(queued)
                    worker.revoking.discard(queued.job.id)
                    if self.on_revoked is not None:
                        await self.on_revoked(worker, queued)
                    break
        elif kind == "finished":
            claim, worker.claim, worker.job_pgid = worker.claim, None, None
            if worker.queued:
                # The worker starts its queued job now: it stays busy.
                worker.claim = worker.queued.pop(0)
                worker.revoking.discard(worker.claim.job.id)
            elif worker.state is WorkerState.BUSY:
                if worker.retire_after_job or self._stopping:
                    worker.retire_after_job = False
                    self._retire(worker)
                else:
                    worker.move(WorkerState.IDLE)
            if worker.state is WorkerState.IDLE:
                # Wake the dispatcher first: its next claim can share the commit that
                # records this result.
                self._on_ready()
            if claim is not None:
                await self._on_finished(worker, claim, JobFinished.from_wire(msg))
            self._changed.set()

    async def _exited(self, worker: Worker) -> None:
        code = await worker.proc.wait()
        expected = worker.state is WorkerState.RETIRING
        claim, pgid = worker.claim, worker.job_pgid
        worker.claim = None
        # Queued jobs never started: the worker reports "finished" for the running job
        # before it starts the next, and every frame it sent was read before EOF.
        unstarted, worker.queued = worker.queued, []
        if worker.state is not WorkerState.EXITED:
            worker.move(WorkerState.EXITED)
        self.workers.pop(worker.name, None)
        self._changed.set()
        if claim is not None:
            # The worker died with its job running: end the job's group so the job
            # never runs twice at once once it is handed out again. If the worker died
            # before it could say which group that is, find it by the job's tag.
            groups = {pgid} if pgid is not None else set()
            if pgid is None and self.queue_tag:
                groups = procs.find_job_groups(self.queue_tag, {claim.job.id})
            for group in groups:
                procs.signal_group(group, signal.SIGKILL)
            await self._on_lost(worker, claim, f"worker {worker.name} exited with code {code}")
        for queued in unstarted:
            if self.on_revoked is not None:
                await self.on_revoked(worker, queued)
        if expected:
            log.debug("worker_exited", worker=worker.name, code=code)
        else:
            log.warning(
                "worker_died",
                worker=worker.name,
                pid=worker.proc.pid,
                code=code,
                job_id=claim.job.id if claim else None,
                attempt=claim.attempt if claim else None,
            )
            if time.monotonic() - worker.started_at < SHORT_LIVED_S:
                self._note_crash()  # only a worker that cannot stay up is a crash loop
        if not self._stopping:
            await self._reconcile()

    def _note_crash(self) -> None:
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(self._crashes) <= 1:
            return
        delay = min(RESPAWN_MAX_S, RESPAWN_BASE_S * 2 ** len(self._crashes))
        if self._respawn_timer is None:
            loop = asyncio.get_running_loop()
            self._respawn_timer = loop.call_later(delay, self._respawn_due)

    def _respawn_due(self) -> None:
        self._respawn_timer = None
        asyncio.get_running_loop().create_task(self._reconcile())
