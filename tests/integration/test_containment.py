"""Containment (issue 13): a job that leaves its process group and scrubs its
environment is still ended by a timeout, a drain, and a SIGKILL of the daemon and
its executors together, when each attempt has a cgroup; with process groups only
(``cgroup = "off"``, or a machine without a writable cgroup v2 hierarchy) it escapes,
and the same test shows it.

The escapee double-forks (its parent exits, it is re-parented to init), calls
``setsid`` (a session and process group of its own) and runs under ``env -i`` (no
``QUEUECTL_*`` variable to be found by), then sleeps. It is found by scanning
``/proc`` for a sleep duration unique to the test.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuectld import cgroup
from tests.conftest import DaemonFactory
from tests.harness import QueueDaemon, wait_for

MODES = ("cgroup", "process-group")


def processes() -> Iterator[tuple[int, bytes, int, bytes]]:
    """Every process now: pid, state letter, parent pid, command line."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue  # gone meanwhile
        yield int(entry), fields[0], int(fields[1]), cmdline


def escapee_pids(token: str) -> list[int]:
    """Live processes whose command line holds ``token`` (zombies do not count)."""
    return [pid for pid, state, _, cmd in processes() if token.encode() in cmd and state != b"Z"]


def escaping_job(token: str, ready: Path) -> str:
    """A shell command whose grandchild leaves the job's group and environment behind."""
    return (
        f"( setsid env -i /bin/sh -c 'sleep {token} & exec sleep {token}' & ) ; "
        f"while [ -z \"$(pgrep -f 'sleep {token}')\" ]; do sleep 0.01; done; "
        f"touch {ready}; sleep 600"
    )


@dataclass
class Contained:
    """A daemon, and whether its attempts have cgroups (else process groups only)."""

    daemon: QueueDaemon
    cgroups: bool


@pytest.fixture(params=MODES)
def contained(request: pytest.FixtureRequest, daemon_factory: DaemonFactory) -> Contained:
    """A daemon with a cgroup per attempt, or with process groups only."""
    cgroups = request.param == "cgroup"
    if cgroups:
        found = cgroup.discover("", "probe")
        if found.base is None:
            pytest.skip(f"no writable cgroup v2 hierarchy here: {found.why}")
        d = daemon_factory(kill_grace=0.5, drain_timeout=0.5)
    else:
        d = daemon_factory(kill_grace=0.5, drain_timeout=0.5, cgroup="off")
    ready = [e for e in d.log_events() if e.get("event") == "daemon_ready"][-1]
    expected = "a cgroup per attempt" if cgroups else "process groups"
    assert ready["containment"].startswith(expected), ready
    return Contained(d, cgroups)


@pytest.fixture
def token() -> Iterator[str]:
    value = f"600.{random.randrange(10**8, 10**9)}"
    yield value
    for pid in escapee_pids(value):  # what escaped (process groups only) is ended here
        os.kill(pid, signal.SIGKILL)


def _check(setup: Contained, token: str) -> None:
    if setup.cgroups:
        wait_for(lambda: not escapee_pids(token), timeout=10, what="no process of the job left")
    else:
        # Today's limit, shown: the escapee outlives the attempt.
        assert escapee_pids(token), "the escapee was expected to survive without a cgroup"


def start_escapee(d: QueueDaemon, token: str, tmp_path: Path, *enqueue: str) -> None:
    """Enqueue and run the escaping job; return once its escapee runs."""
    ready = tmp_path / "ready"
    d.cli("enqueue", "--id", "esc", *enqueue, "--", escaping_job(token, ready))
    d.cli("worker", "start", "--count", "1")
    wait_for(ready.exists, timeout=20, what="the escapee to start")
    assert escapee_pids(token)


def test_timeout_leaves_nothing_behind(contained: Contained, token: str, tmp_path: Path) -> None:
    d = contained.daemon
    start_escapee(d, token, tmp_path, "--timeout", "3")
    job = d.wait_for_state("esc", "failed", "dead", timeout=30)
    assert job["history"][0]["outcome"] == "timeout"
    _check(contained, token)


def test_kill_leaves_nothing_behind(contained: Contained, token: str, tmp_path: Path) -> None:
    d = contained.daemon
    start_escapee(d, token, tmp_path)
    d.cli("kill", "esc")
    job = d.wait_for_state("esc", "cancelled", timeout=30)
    assert job["history"][0]["outcome"] == "killed"
    _check(contained, token)


def test_drain_leaves_nothing_behind(contained: Contained, token: str, tmp_path: Path) -> None:
    d = contained.daemon
    start_escapee(d, token, tmp_path)
    assert d.stop() == 0  # drain_timeout 0.5 s: the job is stopped, requeued
    _check(contained, token)


def test_sigkill_of_daemon_and_executors_leaves_nothing_behind(
    contained: Contained, token: str, tmp_path: Path
) -> None:
    d = contained.daemon
    ready = tmp_path / "ready"
    second = tmp_path / "second"
    # The second run (after the restart) ends at once, so the queue drains.
    command = f"if [ -e {ready} ]; then touch {second}; exit 0; fi; " + escaping_job(token, ready)
    d.cli("enqueue", "--id", "esc", "--", command)
    d.cli("worker", "start", "--count", "1")
    wait_for(ready.exists, timeout=20, what="the escapee to start")
    executors = _executors_of(d.pid)
    assert executors
    # Daemon and executors at once: nobody is left to end the job but the next start.
    # Stopped first, so that none sees another die and ends the job itself.
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in [d.pid, *executors]:
            os.kill(pid, sig)
    d.kill9()
    if contained.cgroups:
        assert escapee_pids(token), "nothing ended the escapee before the restart"
    d.start()
    job = d.wait_for_state("esc", "completed", timeout=30)
    assert job["history"][0]["outcome"] == "interrupted" and second.exists()
    _check(contained, token)


def _executors_of(daemon_pid: int) -> list[int]:
    """The daemon's executor processes (its children running queuectld.executor)."""
    return [
        pid
        for pid, _, ppid, cmd in processes()
        if ppid == daemon_pid and b"queuectld.executor" in cmd
    ]
