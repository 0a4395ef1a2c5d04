"""The machine's limit: how fast two processes can start ``sh -c true`` one after another."""

from __future__ import annotations

import json
import subprocess
import sys
import time

# Each spawner waits for a go signal on stdin so both start together, then reports the
# wall-clock span of its own loop.
SPAWNER = """
import json, subprocess, sys, time
n = int(sys.argv[1])
sys.stdin.readline()
t0 = time.time()
for _ in range(n):
    subprocess.run(["/bin/sh", "-c", "true"])
print(json.dumps([t0, time.time()]))
"""


def python_spawners(n_each: int, processes: int = 2) -> float:
    """Processes/s of ``processes`` Python loops each spawning ``sh -c true`` ``n_each`` times."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPAWNER, str(n_each)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    time.sleep(0.3)  # let both interpreters start
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        spans.append(json.loads(out))
    start = min(s[0] for s in spans)
    end = max(s[1] for s in spans)
    return processes * n_each / (end - start)


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
