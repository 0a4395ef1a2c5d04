"""The peer queues: task-spooler and nq (Debian), huey on SQLite (PyPI, its own venv).

Each measurement mirrors queuectl's: the same ``true`` jobs, two slots, the same
``: > FIFO`` job for pickup latency, and jobs enqueued while nothing runs (a blocker job
holds the slots, and the clock starts when it is released).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.core import PEERS_DIR, log, percentile, temp_dir

HUEY_VENV = PEERS_DIR / "huey"
HUEY_DRIVER = Path(__file__).with_name("huey_driver.py")
# task-spooler keeps one connection per queued job and refuses more than about 990.
TSP_MAX_JOBS = 900


def tsp_binary() -> str | None:
    return shutil.which("tsp") or shutil.which("ts")


def nq_binary() -> str | None:
    return shutil.which("nq")


def huey_python() -> str | None:
    py = HUEY_VENV / "bin" / "python"
    if not py.exists():
        return None
    ok = subprocess.run([str(py), "-c", "import huey"], capture_output=True).returncode == 0
    return str(py) if ok else None


def installed() -> dict[str, bool]:
    return {
        "task-spooler": tsp_binary() is not None,
        "nq": nq_binary() is not None,
        "huey": huey_python() is not None,
    }


def install() -> dict[str, str]:
    """Install the peers from this machine's registries; returns what happened to each."""
    notes: dict[str, str] = {}
    missing = [p for p, b in (("task-spooler", tsp_binary()), ("nq", nq_binary())) if not b]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            for p in missing:
                notes[p] = "not installed (needs root and apt-get)"
        else:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            log(f"apt-get update; apt-get install {' '.join(missing)}")
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=False)
    for p, b in (("task-spooler", tsp_binary()), ("nq", nq_binary())):
        notes.setdefault(p, "installed" if b else "not installed")
    if huey_python() is None:
        log(f"creating {HUEY_VENV} and installing huey from PyPI")
        HUEY_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(HUEY_VENV)], check=False)
        pip = [str(HUEY_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "huey"], check=False)
    notes["huey"] = "installed" if huey_python() else "not installed"
    return notes


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("task-spooler", "nq"):
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True
        )
        out[pkg] = r.stdout.strip() if r.returncode == 0 else None
    py = huey_python()
    if py:
        r = subprocess.run(
            [py, "-c", "import huey; print(huey.__version__)"], capture_output=True, text=True
        )
        out["huey"] = r.stdout.strip() or None
    else:
        out["huey"] = None
    return out


class Release:
    """FIFOs that blocker jobs wait on: opening them for writing lets the blockers go."""

    def __init__(self, directory: Path, count: int) -> None:
        self.paths = [directory / f"release{i}.fifo" for i in range(count)]
        for p in self.paths:
            os.mkfifo(p)
        self.released = False

    def __enter__(self) -> Release:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.released:  # a measurement failed half-way: never leave a blocker behind
            self.go(timeout=2.0)

    def blocker(self, i: int) -> list[str]:
        return ["sh", "-c", f"read x < {self.paths[i]}; true"]

    def go(self, timeout: float = 10.0) -> None:
        """Release every blocker (waiting, up to ``timeout``, for each to be reading)."""
        self.released = True
        deadline = time.monotonic() + timeout
        for p in self.paths:
            while True:
                try:
                    fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader yet
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
                    continue
                os.close(fd)
                break


def _quiet(cmd: list[str], env: dict[str, str], timeout: float = 60.0) -> str:
    r = subprocess.run(
        cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[:200]}")
    return r.stdout


# -- task-spooler ------------------------------------------------------------------


@contextlib.contextmanager
def _tsp(directory: Path) -> Iterator[tuple[str, dict[str, str]]]:
    exe = tsp_binary()
    assert exe is not None
    env = {**os.environ, "TS_SOCKET": str(directory / "tsp.sock"), "TMPDIR": str(directory)}
    try:
        yield exe, env
    finally:
        subprocess.run([exe, "-K"], env=env, capture_output=True, timeout=30)


def tsp_drain(n: int) -> float:
    """Jobs/s of task-spooler with 2 slots; ``n`` is capped at what it accepts."""
    n = min(n, TSP_MAX_JOBS)
    with temp_dir("tsp") as d, _tsp(d) as (exe, env), Release(d, 1) as release:
        _quiet([exe, "-S", "1"], env)
        _quiet([exe, *release.blocker(0)], env)
        last = ""
        for _ in range(n):
            last = _quiet([exe, "true"], env).strip()
        time.sleep(0.2)
        t0 = time.perf_counter()
        _quiet([exe, "-S", "2"], env)
        release.go()
        _quiet([exe, "-w", last], env, timeout=600)
        while True:
            listing = _quiet([exe, "-l"], env)
            if " running " not in listing and " queued " not in listing:
                break
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        finished = listing.count(" finished ")
        if finished < n:
            raise RuntimeError(f"task-spooler finished {finished} of {n} jobs")
    return n / elapsed


@contextlib.contextmanager
def cli_peer_session(name: str) -> Iterator[tuple[list[str], dict[str, str]] | None]:
    """A peer ready to take enqueues without running them: its slot is held by a blocker.

    Yields the command line of one enqueue (``true``) and its environment.
    """
    if name == "task-spooler":
        if tsp_binary() is None:
            yield None
            return
        with temp_dir("tsp-cli") as d, _tsp(d) as (exe, env):
            release = Release(d, 1)
            _quiet([exe, "-S", "1"], env)
            _quiet([exe, *release.blocker(0)], env)
            try:
                yield [exe, "true"], env
            finally:
                release.go()
        return
    if name == "nq":
        nq = nq_binary()
        if nq is None:
            yield None
            return
        exe = nq
        with temp_dir("nq-cli") as d:
            env = {**os.environ, "NQDIR": str(d)}
            release = Release(d, 1)
            _quiet([exe, "-q", *release.blocker(0)], env)
            try:
                yield [exe, "-q", "true"], env
            finally:
                release.go()
                subprocess.run([exe, "-w"], env=env, capture_output=True, timeout=600)
        return
    raise ValueError(name)


# -- nq ------------------------------------------------------------------------------


def nq_drain(n: int) -> float:
    """Jobs/s of nq with two queue directories (nq runs one job at a time per directory)."""
    exe = nq_binary()
    assert exe is not None
    with temp_dir("nq") as d, Release(d, 2) as release:
        envs = []
        for i in range(2):
            (d / f"q{i}").mkdir()
            env = {**os.environ, "NQDIR": str(d / f"q{i}")}
            envs.append(env)
            _quiet([exe, "-q", *release.blocker(i)], env)
        for j in range(n):
            _quiet([exe, "-q", "true"], envs[j % 2])
        time.sleep(0.2)
        t0 = time.perf_counter()
        release.go()
        waits = [subprocess.Popen([exe, "-w"], env=env) for env in envs]
        for w in waits:
            w.wait(timeout=600)
        elapsed = time.perf_counter() - t0
        done = sum(len(list((d / f"q{i}").glob(",*"))) for i in range(2))
        if done < n + 2:
            raise RuntimeError(f"nq left {done} job files of {n + 2}")
    return n / elapsed


# -- pickup latency (task-spooler and nq) ------------------------------------------------


class _Fifo:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "started.fifo"
        os.mkfifo(self.path)

    def time_start(self, start_job: list[str], env: dict[str, str]) -> float:
        stamp: list[float] = []

        def reader() -> None:
            fd = os.open(self.path, os.O_RDONLY)
            stamp.append(time.perf_counter())
            os.close(fd)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(0.002)
        t0 = time.perf_counter()
        subprocess.run(start_job, env=env, stdin=subprocess.DEVNULL, capture_output=True)
        thread.join(10.0)
        if not stamp:
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            raise RuntimeError("a pickup job did not start within 10 s")
        return (stamp[0] - t0) * 1000


def tsp_pickup(samples: int) -> dict[str, float]:
    with temp_dir("tsp-pickup") as d, _tsp(d) as (exe, env):
        fifo = _Fifo(d)
        _quiet([exe, "-S", "2"], env)
        lat = []
        for _ in range(samples):
            lat.append(fifo.time_start([exe, "sh", "-c", f": > {fifo.path}"], env))
            time.sleep(0.01)
    return {"p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "samples": len(lat)}


def nq_pickup(samples: int) -> dict[str, float]:
    exe = nq_binary()
    assert exe is not None
    with temp_dir("nq-pickup") as d:
        env = {**os.environ, "NQDIR": str(d)}
        fifo = _Fifo(d)
        lat = []
        for _ in range(samples):
            lat.append(fifo.time_start([exe, "-q", "sh", "-c", f": > {fifo.path}"], env))
            subprocess.run([exe, "-w"], env=env, capture_output=True, timeout=60)
    return {"p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "samples": len(lat)}


# -- huey (through its own interpreter) ----------------------------------------------


def huey(mode: str, n: int) -> dict[str, Any]:
    py = huey_python()
    assert py is not None
    with temp_dir("huey") as d:
        r = subprocess.run(
            [py, str(HUEY_DRIVER), mode, str(n), str(d)],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise RuntimeError(f"huey {mode} failed: {r.stderr.strip()[-400:]}")
        result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return result
