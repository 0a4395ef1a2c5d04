"""Limits and accounting through a real daemon (issue 13).

Which form each limit takes depends on the machine (docs/jobs.md): the cgroup files
when the controller is delegated to queuectld's cgroup, else the nearest rlimit.
Each path is a test of its own; one the machine cannot take is skipped with the
reason (never passed without its assertions). On a machine with cgroup v2 beside v1
controllers (memory, cpu and pids held by v1) the rlimit tests run and the
controller tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from queuectld import cgroup
from tests.harness import QueueDaemon, queuectl_command, wait_for

PY = sys.executable
ALLOCATE = f"{PY} -c 'x = bytearray(200 * 1024 * 1024); print(len(x))'"
BUSY = f"{PY} -c 'while True: pass'"


def controllers(daemon: QueueDaemon) -> frozenset[str]:
    """The controllers this daemon's attempt cgroups have (from its startup line)."""
    ready = [e for e in daemon.log_events() if e.get("event") == "daemon_ready"][-1]
    text = str(ready["containment"])
    if not text.startswith("a cgroup per attempt"):
        return frozenset()
    named = text.rsplit("controllers: ", 1)[1].rstrip(")")
    return frozenset() if named == "none" else frozenset(named.split(", "))


def need(daemon: QueueDaemon, name: str, present: bool) -> None:
    if (name in controllers(daemon)) != present:
        have = "has" if not present else "lacks"
        pytest.skip(f"this machine {have} a delegated {name} controller")


def run_one(daemon: QueueDaemon, *enqueue: str) -> dict[str, object]:
    daemon.cli("enqueue", "--id", "j", "--max-retries", "0", *enqueue)
    daemon.cli("worker", "start", "--count", "1")
    job: dict[str, object] = daemon.wait_for_state("j", "completed", "dead", timeout=60)
    return job


# -- memory ------------------------------------------------------------------------


def test_memory_by_rlimit_fails_the_allocation(daemon: QueueDaemon) -> None:
    need(daemon, "memory", present=False)
    job = run_one(daemon, "--memory", "64M", "--", ALLOCATE)
    assert job["state"] == "dead" and job["memory"] == 64 << 20
    log = daemon.job_log("j")
    assert "MemoryError" in log
    assert "limits: memory 64M (RLIMIT_AS, each process)" in log
    # The same allocation under a larger limit succeeds: the limit, not the job, failed it.
    daemon.cli("enqueue", "--id", "k", "--memory", "1G", "--", ALLOCATE)
    assert daemon.wait_for_state("k", "completed", "dead", timeout=60)["state"] == "completed"


def test_memory_by_cgroup_ends_oom_with_the_reason(daemon: QueueDaemon) -> None:
    need(daemon, "memory", present=True)
    job = run_one(daemon, "--memory", "64M", "--", ALLOCATE)
    (attempt,) = job["history"]  # type: ignore[misc]
    assert attempt["outcome"] == "oom"
    assert attempt["error"] == "killed: out of memory, limit 64M"
    assert "Outcome: oom (killed: out of memory, limit 64M)" in daemon.job_log("j")


# -- CPU ---------------------------------------------------------------------------


def test_cpus_by_rlimit_caps_cpu_time(daemon: QueueDaemon) -> None:
    need(daemon, "cpu", present=False)
    # 0.05 CPU x 40 s timeout = 2 s of CPU time each process may use: SIGXCPU ends the
    # busy loop after 2 s of CPU (a twentieth of a core gets there before the timeout,
    # however loaded the machine).
    job = run_one(daemon, "--cpus", "0.05", "--timeout", "40", "--", BUSY)
    (attempt,) = job["history"]  # type: ignore[misc]
    assert attempt["error"] == "killed: CPU time limit (2s, SIGXCPU)", attempt
    assert 1.5 <= attempt["cpu_seconds"] <= 3  # type: ignore[operator]
    assert "cpus 0.05 (RLIMIT_CPU 2s, each process)" in daemon.job_log("j")


def test_cpus_by_cgroup_is_a_rate(daemon: QueueDaemon) -> None:
    need(daemon, "cpu", present=True)
    command = f"timeout 4 {BUSY}"
    job = run_one(daemon, "--cpus", "0.5", "--", command)
    (attempt,) = job["history"]  # type: ignore[misc]
    took = attempt["finished_at"] - attempt["started_at"]  # type: ignore[operator]
    # From cpu.stat: about half a CPU over the run, not the wall time.
    assert 0.35 * took <= attempt["cpu_seconds"] <= 0.6 * took, attempt


# -- processes -----------------------------------------------------------------------


def test_max_procs_for_a_root_job_without_pids_controller_is_refused(daemon: QueueDaemon) -> None:
    need(daemon, "pids", present=False)
    if os.geteuid() != 0:
        pytest.skip("only a root daemon runs jobs as root")
    proc = daemon.run("enqueue", "--max-procs", "64", "--", "true")
    assert proc.returncode == 1
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert err.startswith("queuectl: --max-procs cannot be enforced here") and err.count("\n") == 1
    assert daemon.counts()["pending"] == 0  # nothing stored


def test_fork_bomb_under_pids_max_ends(daemon: QueueDaemon) -> None:
    need(daemon, "pids", present=True)
    job = run_one(daemon, "--max-procs", "32", "--timeout", "5", "--", "f() { f | f & }; f")
    assert job["state"] == "dead"
    assert "max-procs 32 (pids.max)" in daemon.job_log("j")


# -- accounting ----------------------------------------------------------------------


def test_each_attempt_records_cpu_time_and_peak_memory(daemon: QueueDaemon) -> None:
    work = f"{PY} -c 'x = bytearray(80 * 1024 * 1024); sum(range(3_000_000))'"
    daemon.cli("enqueue", "--id", "j", "--", work)  # no worker yet: the job waits
    # The watch must follow before the job can finish: started after it (a busy machine
    # is slow to start a CLI), it finds the queue idle and prints no `completed`.
    watch = subprocess.Popen(
        [*queuectl_command(), "watch", "--until-idle", "--json"],
        env=daemon.cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: daemon.cli_json("metrics")["connections"] >= 2, what="the watch")
    daemon.cli("worker", "start", "--count", "1")
    out, _ = watch.communicate(timeout=60)
    events = [json.loads(x) for x in out.splitlines()]
    done = next(e for e in events if e["type"] == "completed")
    assert done["cpu_seconds"] > 0.05 and done["peak_bytes"] >= 80 << 20
    (attempt,) = daemon.job("j")["history"]
    assert attempt["cpu_seconds"] == done["cpu_seconds"]
    assert attempt["peak_bytes"] == done["peak_bytes"]
    show = daemon.cli("show", "j")
    assert f"attempt 1 used: cpu {done['cpu_seconds']:.3f}s, peak memory " in show
    wide = daemon.cli("show", "--wide", "j")
    assert "| cpu " in wide and "| peak " in wide
    header = daemon.job_log("j")
    contained = "cgroup" if cgroup.discover("", daemon.store_key()).base else "process group"
    assert f"Resources: cpu {done['cpu_seconds']:.3f}s, peak memory " in header
    assert f"contained by its {contained}" in header
    metrics = json.loads(daemon.cli("metrics", "--json"))
    assert metrics["attempts"]["cpu_seconds_completed"] == done["cpu_seconds"]
