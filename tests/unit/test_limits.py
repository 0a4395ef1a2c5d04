"""Limits, sizes, outcomes and cgroup discovery: the pure parts of issue 13."""

from __future__ import annotations

import resource
import signal
import subprocess
from pathlib import Path

import pytest

from queuectl.errors import InvalidRequest
from queuectl.protocol import Outcome
from queuectl.sizes import format_size, human_size, parse_size
from queuectld import cgroup, limits, procs
from queuectld.executor import classify

ALL = frozenset({"cpu", "memory", "pids"})


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1048576", 1 << 20),
        ("1.5g", 3 << 29),
        ("64MiB", 64 << 20),
        ("100k", 100 << 10),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1G", "lots", "nan", "1e400", "2P"])
def test_bad_sizes_are_one_sentence(text: str) -> None:
    with pytest.raises(InvalidRequest, match="memory must be"):
        parse_size(text)


def test_sizes_print_exactly_or_rounded() -> None:
    assert format_size(512 << 20) == "512M" and format_size(3 << 29) == "1536M"
    assert human_size(19 << 20) == "19.0M" and human_size(900 << 10) == "900K"


def test_plan_uses_the_cgroup_files_when_the_controllers_are_delegated() -> None:
    plan = limits.plan(limits.Limits(512 << 20, 1.5, 64), timeout=10, controllers=ALL)
    assert plan.cgroup_files == {
        "memory.max": str(512 << 20),
        "memory.swap.max": "0",
        "cpu.max": "150000 100000",
        "pids.max": "64",
    }
    assert plan.rlimits == []
    assert plan.note == "memory 512M (memory.max), cpus 1.5 (cpu.max), max-procs 64 (pids.max)"


def test_plan_falls_back_to_the_nearest_rlimits() -> None:
    plan = limits.plan(limits.Limits(512 << 20, 0.5, 64), timeout=9, controllers=frozenset())
    assert plan.cgroup_files == {}
    assert plan.rlimits == [
        (resource.RLIMIT_AS, 512 << 20),
        (resource.RLIMIT_CPU, 5),  # 0.5 CPU x 9 s, rounded up
        (resource.RLIMIT_NPROC, 64),
    ]
    assert plan.note is not None and "RLIMIT_AS" in plan.note and "RLIMIT_CPU 5s" in plan.note
    script = limits.ulimit_script(plan.rlimits)
    assert "ulimit -S -v 524288 && ulimit -H -v 524288" in script
    assert "ulimit -S -t 5 && ulimit -H -t 10" in script  # SIGXCPU first, SIGKILL later
    assert "ulimit -S -p 64 && ulimit -H -p 64" in script
    # One controller delegated, the others not: each limit takes its own form.
    mixed = limits.plan(limits.Limits(1 << 30, 2.0, None), timeout=1, controllers={"cpu"})
    assert mixed.cgroup_files == {"cpu.max": "200000 100000"}
    assert mixed.rlimits == [(resource.RLIMIT_AS, 1 << 30)]
    assert not limits.plan(limits.Limits(), timeout=1, controllers=ALL).note


def test_a_process_limit_root_cannot_be_held_to_is_refused() -> None:
    procs = limits.Limits(max_procs=8)
    problem = limits.refusal(procs, runs_as_root=True, controllers=frozenset())
    assert problem is not None and "--max-procs" in problem and problem.count(".") <= 1
    assert limits.refusal(procs, runs_as_root=False, controllers=frozenset()) is None
    assert limits.refusal(procs, runs_as_root=True, controllers=frozenset({"pids"})) is None
    assert limits.refusal(limits.Limits(memory=1 << 30), True, frozenset()) is None


def test_outcomes_name_oom_kills_and_cpu_time_limits() -> None:
    kill9 = -signal.SIGKILL.value
    assert classify(kill9, False, False, 10, oom_kills=1, memory_limit="512M") == (
        Outcome.OOM,
        "killed: out of memory, limit 512M",
    )
    assert classify(137, False, False, 10, oom_kills=2)[0] is Outcome.OOM  # via the shell
    assert classify(kill9, False, False, 10)[0] is Outcome.SIGNALED  # no OOM kill counted
    assert classify(0, False, False, 10, oom_kills=1)[0] is Outcome.COMPLETED  # it coped
    assert classify(kill9, True, False, 10, oom_kills=1)[0] is Outcome.TIMEOUT
    xcpu = 128 + signal.SIGXCPU.value
    assert classify(xcpu, False, False, 10, cpu_limit_s=5) == (
        Outcome.SIGNALED,
        "killed: CPU time limit (5s, SIGXCPU)",
    )


MOUNTINFO = (
    "25 1 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def test_the_unified_hierarchy_and_our_place_in_it_are_read() -> None:
    assert cgroup.cgroup2_mount(MOUNTINFO) == "/sys/fs/cgroup/unified"
    both = MOUNTINFO + "50 1 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert cgroup.cgroup2_mount(both) == "/sys/fs/cgroup"
    assert cgroup.cgroup2_mount("25 1 0:22 / /x rw - ext4 /dev/sda rw\n") is None
    text = "4:memory:/process_api/a\n0::/system.slice/queuectld.service\n"
    assert cgroup.own_cgroup(text) == "/system.slice/queuectld.service"
    assert cgroup.own_cgroup("0::/\n") == "/" and cgroup.own_cgroup("1:cpu:/\n") is None
    assert cgroup.queue_dir_name("/a/queue.db") == cgroup.queue_dir_name("/a/queue.db")
    assert cgroup.queue_dir_name("/a/queue.db") != cgroup.queue_dir_name("/b/queue.db")


def test_discovery_says_why_there_is_no_cgroup(tmp_path: Path) -> None:
    off = cgroup.discover("off", "q")
    assert off.base is None and off.describe() == "process groups (cgroup = off)"
    named = cgroup.discover(str(tmp_path), "q")  # a directory, but no cgroup.procs in it
    assert named.base is None and "not a writable cgroup v2 directory" in named.why
    none = cgroup.discover("", "q", {}, "0::/\n", "25 1 0:22 / /x rw - ext4 /dev/sda rw\n")
    assert none.base is None and "no cgroup v2 hierarchy" in none.why
    # Under systemd, an undelegated cgroup is not ours to divide, root or not.
    fake = tmp_path / "cg"
    (fake / "system.slice").mkdir(parents=True)
    (fake / "system.slice" / "cgroup.procs").write_text("")
    info = f"41 31 0:38 / {fake} rw - cgroup2 cgroup2 rw\n"
    systemd = cgroup.discover("", "q", {"INVOCATION_ID": "x"}, "0::/system.slice\n", info)
    assert systemd.base is None and "Delegate=yes" in systemd.why


def test_the_job_shell_joins_first_and_runs_the_command_as_its_own(tmp_path: Path) -> None:
    """The join goes in front of the command on its first line: the command sees the
    same $0, no arguments, its own line numbers; a syntax error runs nothing."""
    joined = tmp_path / "cgroup.procs"  # a plain file stands in for the cgroup's
    command = "echo $0 $#; nosuchcommand"
    plain = subprocess.run(procs.shell_argv(command, None), capture_output=True, text=True)
    contained = subprocess.run(
        procs.shell_argv(command, str(joined), "ulimit -S -t 60"), capture_output=True, text=True
    )
    assert (contained.returncode, contained.stdout) == (plain.returncode, plain.stdout)
    assert contained.stderr == plain.stderr and "1: nosuchcommand: not found" in plain.stderr
    assert joined.read_text().strip().isdigit()  # the shell's own pid, written first
    joined.unlink()
    broken = subprocess.run(
        procs.shell_argv("echo ran; fi", str(joined)), capture_output=True, text=True
    )
    assert broken.returncode == 2 and broken.stdout == "" and not joined.exists()
    unwritable = subprocess.run(
        procs.shell_argv("echo ran", str(tmp_path / "no" / "such")), capture_output=True
    )
    assert unwritable.returncode == 125 and unwritable.stdout == b""
