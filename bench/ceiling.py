"""The machine's limit: how fast two processes can start ``sh -c true`` one after another."""

from __future__ import annotations

import json
import subprocess
import sys
import time

# Each spawner waits for a go signal on stdin so both start together, then reports the
# wall-clock span of its own loop.
# With a directory argument each spawn is followed by writing a small file there, the
# least a queue that keeps every job's output in a file of its own must do.
SPAWNER = """
import json, os, subprocess, sys, time
n = int(sys.argv[1])
logs = sys.argv[2] if len(sys.argv) > 2 else None
sys.stdin.readline()
t0 = time.time()
for i in range(n):
    subprocess.run(["/bin/sh", "-c", "true"])
    if logs:
        fd = os.open(f"{logs}/job_{i}.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.write(fd, b"=== job ===\\nCommand: true\\nExit Code: 0\\n")
        os.close(fd)
print(json.dumps([t0, time.time()]))
"""


def python_spawners(n_each: int, processes: int = 2, log_dirs: list[str] | None = None) -> float:
    """Processes/s of ``processes`` Python loops each spawning ``sh -c true`` ``n_each`` times."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPAWNER, str(n_each), *([log_dirs[i]] if log_dirs else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    time.sleep(0.3)  # let both interpreters start
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    spans: list[list[float]] = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        spans.append(json.loads(out))
    start = min(s[0] for s in spans)
    end = max(s[1] for s in spans)
    return float(processes * n_each / (end - start))


def xargs(n: int, parallel: int = 2) -> float:
    """Processes/s of ``xargs -P2`` running ``sh -c true`` ``n`` times."""
    data = "true\n" * n
    t0 = time.perf_counter()
    subprocess.run(
        ["xargs", f"-P{parallel}", "-n1", "sh", "-c"],
        input=data,
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return n / (time.perf_counter() - t0)
