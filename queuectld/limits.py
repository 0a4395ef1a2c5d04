"""Per-job limits (``--memory``, ``--cpus``, ``--max-procs``): in which form each applies.

Pure: given the limits, the attempt's timeout and what the attempt's cgroup offers,
:func:`plan` says which cgroup files to write and which rlimits to set instead:

============  ===============================  ==========================================
limit         with the controller delegated    otherwise (the nearest rlimit)
============  ===============================  ==========================================
memory        ``memory.max``, ``memory.swap.    ``RLIMIT_AS`` (address space of each
              max`` 0 (no swapping past it)    process: allocations fail, no OOM kill)
cpus          ``cpu.max`` (a rate: 0.5 = half  ``RLIMIT_CPU`` = cpus x timeout seconds
              a CPU, over all its processes)   of CPU time, for each process
max-procs     ``pids.max`` (the attempt's      ``RLIMIT_NPROC`` (every process of the
              processes and threads)           job's user; never enforced for root)
============  ===============================  ==========================================

:func:`refusal` names a limit that cannot be enforced at all, for enqueue to refuse.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass, field

from queuectl.sizes import format_size

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    """One job's limits; None: no limit."""

    memory: int | None = None  # bytes
    cpus: float | None = None
    max_procs: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory, self.cpus, self.max_procs))


@dataclass(frozen=True)
class Plan:
    """How an attempt's limits are applied, and the log header's words for it."""

    cgroup_files: dict[str, str] = field(default_factory=dict)
    rlimits: list[tuple[int, int]] = field(default_factory=list)  # (RLIMIT_*, value)
    note: str | None = None


def plan(limits: Limits, timeout: float, controllers: frozenset[str]) -> Plan:
    """Which cgroup files and rlimits carry ``limits`` (``controllers``: the cgroup's)."""
    files: dict[str, str] = {}
    rlimits: list[tuple[int, int]] = []
    words: list[str] = []
    if limits.memory is not None:
        size = format_size(limits.memory)
        if "memory" in controllers:
            files["memory.max"] = str(limits.memory)
            files["memory.swap.max"] = "0"
            words.append(f"memory {size} (memory.max)")
        else:
            rlimits.append((resource.RLIMIT_AS, limits.memory))
            words.append(f"memory {size} (RLIMIT_AS, each process)")
    if limits.cpus is not None:
        if "cpu" in controllers:
            files["cpu.max"] = f"{max(1000, round(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}"
            words.append(f"cpus {limits.cpus:g} (cpu.max)")
        else:
            seconds = max(1, math.ceil(limits.cpus * timeout))
            rlimits.append((resource.RLIMIT_CPU, seconds))
            words.append(f"cpus {limits.cpus:g} (RLIMIT_CPU {seconds}s, each process)")
    if limits.max_procs is not None:
        if "pids" in controllers:
            files["pids.max"] = str(limits.max_procs)
            words.append(f"max-procs {limits.max_procs} (pids.max)")
        else:
            rlimits.append((resource.RLIMIT_NPROC, limits.max_procs))
            words.append(f"max-procs {limits.max_procs} (RLIMIT_NPROC, the user's processes)")
    return Plan(files, rlimits, ", ".join(words) or None)


def refusal(limits: Limits, runs_as_root: bool, controllers: frozenset[str]) -> str | None:
    """Why ``limits`` cannot be enforced for this job at all (None: they can)."""
    if limits.max_procs is not None and "pids" not in controllers and runs_as_root:
        return (
            "--max-procs cannot be enforced here: the job would run as root, which "
            "RLIMIT_NPROC does not limit, and no pids controller is delegated to "
            "queuectld; enqueue it without --max-procs, or as another user"
        )
    return None


# The shell's ulimit flags (dash and bash agree): -v KiB, -t seconds, -p processes.
_ULIMIT = {resource.RLIMIT_AS: "-v", resource.RLIMIT_CPU: "-t", resource.RLIMIT_NPROC: "-p"}


# RLIMIT_CPU's hard limit is a few seconds above the soft one: the job gets SIGXCPU
# (named in its reason) first, SIGKILL only if it ignores that.
CPU_HARD_EXTRA_S = 5


def soft_and_hard(which: int, value: int) -> tuple[int, int]:
    """The (soft, hard) pair :func:`plan`'s rlimit ``value`` stands for."""
    return value, value + CPU_HARD_EXTRA_S if which == resource.RLIMIT_CPU else value


def ulimit_script(rlimits: list[tuple[int, int]]) -> str:
    """Shell commands setting ``rlimits`` before the job's command runs."""
    parts = []
    for which, value in rlimits:
        soft, hard = soft_and_hard(which, value)
        scale = 1024 if which == resource.RLIMIT_AS else 1  # ulimit -v counts KiB
        flag = _ULIMIT[which]
        # Soft first: a hard limit below the soft one in force is refused.
        parts.append(f"ulimit -S {flag} {soft // scale} && ulimit -H {flag} {hard // scale}")
    return " && ".join(parts)


def cpu_seconds_limit(rlimits: list[tuple[int, int]] | None) -> int | None:
    """The RLIMIT_CPU among ``rlimits``, if any (an attempt ended by it is named so)."""
    return next((v for w, v in rlimits or () if w == resource.RLIMIT_CPU), None)
