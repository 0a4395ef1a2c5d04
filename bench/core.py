"""Shared pieces: summaries (median, min-max), temporary directories, small process helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEERS_DIR = REPO / "bench" / ".peers"


def log(msg: str) -> None:
    """Progress on stderr (stdout's last line is reserved for the quick mode's JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(samples: Sequence[float | None], digits: int = 3) -> dict[str, Any] | None:
    """Median with min and max; ``None`` when there is no sample at all."""
    values = [float(v) for v in samples if v is not None]
    if not values:
        return None
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "samples": [round(v, digits) for v in values],
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of 100 samples is the 50th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def ratio_samples(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
    """Per-round ratios a[i]/b[i] of two series measured in the same rounds."""
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y]


_RUN_DIR: Path | None = None


def run_dir() -> Path:
    """One directory for the whole run, on the disk the user's state would be on (not tmpfs)."""
    global _RUN_DIR
    if _RUN_DIR is None:
        base = os.environ.get("BENCH_TMPDIR") or tempfile.gettempdir()
        _RUN_DIR = Path(tempfile.mkdtemp(prefix="qbench-", dir=base))
    return _RUN_DIR


def cleanup() -> None:
    """Remove everything the run created (called once, at the very end)."""
    global _RUN_DIR
    if _RUN_DIR is not None:
        shutil.rmtree(_RUN_DIR, ignore_errors=True)
        _RUN_DIR = None


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory for one measurement.

    It is removed only at the end of the run: on ext4, creating a file costs far more
    for a minute after many files were deleted nearby (the allocator skips recently
    deleted inodes one by one), and every queue here creates a file per job, so deleting
    one measurement's thousands of files would slow the next one down.
    """
    yield Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=run_dir()))


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``check`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End a process we started: wait, then SIGTERM, then SIGKILL (its group if it leads one)."""
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=5.0)
            return
        except subprocess.TimeoutExpired:
            continue


def rss_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc (0, 0 if it is gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "kernel": os.uname().release,
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError, IndexError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        df = subprocess.run(
            ["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, timeout=5
        )
        info["tmp_fs"] = df.stdout.splitlines()[-1].split()[1]
    return info
