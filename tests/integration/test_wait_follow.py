"""`queuectl wait` and `queuectl logs -f` through the real CLI against a real daemon.

Jobs that must still be running while the test looks block on a FIFO the test
releases (`read x < FIFO`), so nothing here sleeps for a fixed time.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from queuectl.errors import EXIT_WAIT_CANCELLED, EXIT_WAIT_DEAD, EXIT_WAIT_TIMEOUT
from tests.harness import QueueDaemon, queuectl_command, wait_for

pytestmark = pytest.mark.timeout(90)


def spawn(daemon: QueueDaemon, *args: str) -> subprocess.Popen[bytes]:
    """``queuectl ARGS`` in the background, its output on pipes."""
    return subprocess.Popen(
        [*queuectl_command(), *args],
        env=daemon.cli_env(),
        cwd=daemon.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_until(pipe: int, needle: bytes, timeout: float = 20.0) -> bytes:
    """What ``pipe`` delivers until ``needle`` has come (fails after ``timeout``)."""
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {got!r}"
        if select.select([pipe], [], [], left)[0]:
            data = os.read(pipe, 65536)
            assert data, f"the pipe closed before {needle!r}; got {got!r}"
            got += data
    return got


def finish(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def release(fifo: Path) -> None:
    """Let the job blocked on ``fifo`` go on (opening blocks until it reads)."""
    with open(fifo, "w") as fh:
        fh.write("go\n")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "gate"
    os.mkfifo(path)
    return path


def test_logs_follow_prints_output_before_the_job_ends(daemon: QueueDaemon, fifo: Path) -> None:
    daemon.cli(
        "enqueue", "--id", "f", "--", f"echo first; echo oops >&2; read x < {fifo}; echo second"
    )
    follower = spawn(daemon, "logs", "-f", "f")  # the job is pending: it waits for it
    daemon.cli("worker", "start", "--count", "1")
    assert follower.stdout is not None and follower.stderr is not None
    assert read_until(follower.stdout.fileno(), b"first\n") == b"first\n"
    assert read_until(follower.stderr.fileno(), b"oops\n") == b"oops\n"
    assert daemon.job("f")["state"] == "processing"  # blocked on the FIFO
    assert follower.poll() is None
    release(fifo)
    code, out, err = finish(follower)
    assert (code, out, err) == (0, b"second\n", b"")
    assert daemon.job("f")["state"] == "completed"


def test_several_followers_early_and_late_see_everything_once(
    daemon: QueueDaemon, fifo: Path
) -> None:
    daemon.cli("enqueue", "--id", "m", "--", f"echo one; seq 1 20000; read x < {fifo}; echo two")
    early = [spawn(daemon, "logs", "-f", "m") for _ in range(2)]
    gone = spawn(daemon, "logs", "-f", "m")
    daemon.cli("worker", "start", "--count", "1")
    heads = {}
    for proc in [*early, gone]:
        assert proc.stdout is not None
        heads[proc] = read_until(proc.stdout.fileno(), b"\n20000\n")
    gone.kill()  # a follower that disconnects; the others go on
    gone.wait()
    late = spawn(daemon, "logs", "-f", "m")  # joins a running job: what it printed so far
    assert late.stdout is not None
    heads[late] = read_until(late.stdout.fileno(), b"\n20000\n")
    release(fifo)
    expected = b"one\n" + b"".join(b"%d\n" % i for i in range(1, 20001)) + b"two\n"
    for proc in [*early, late]:
        code, rest, err = finish(proc)
        assert (code, err) == (0, b"")
        assert heads[proc] + rest == expected  # everything exactly once, in order
    # A finished job: its log, as without -f.
    after = daemon.run("logs", "-f", "m")
    assert after.returncode == 0 and after.stdout == daemon.job_log("m")


def test_follow_sees_each_byte_once_when_joining_mid_stream(
    daemon: QueueDaemon, fifo: Path
) -> None:
    daemon.cli("enqueue", "--id", "s", "--", f"seq 1 5000; read x < {fifo}; seq 5001 10000")
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("s", "processing")
    first = spawn(daemon, "logs", "-f", "s")
    assert first.stdout is not None
    head = read_until(first.stdout.fileno(), b"\n5000\n")
    second = spawn(daemon, "logs", "-f", "s")  # the first one's output is resent: no repeat
    assert second.stdout is not None
    head2 = read_until(second.stdout.fileno(), b"\n5000\n")
    release(fifo)
    expected = b"".join(b"%d\n" % i for i in range(1, 10001))
    for proc, got in ((first, head), (second, head2)):
        code, rest, _ = finish(proc)
        assert code == 0
        assert got + rest == expected


def test_wait_exit_statuses(daemon: QueueDaemon, fifo: Path) -> None:
    daemon.cli("config", "set", "backoff-max", "0")  # retries at once
    daemon.cli("enqueue", "--id", "ok", "--", "true")
    daemon.cli("enqueue", "--id", "bad", "--max-retries", "1", "--", "exit 7")
    daemon.cli(
        "enqueue", "--id", "slow", "--timeout", "0.2", "--max-retries", "0", "--", "sleep 30"
    )
    daemon.cli("enqueue", "--id", "gate", "--", f"read x < {fifo}")
    # Pushed, not polled: started before anything ran, answered when the jobs end.
    waiter = spawn(daemon, "wait", "ok", "gate")
    daemon.cli("worker", "start", "--count", "4")
    daemon.wait_for_state("ok", "completed")
    daemon.wait_for_state("gate", "processing")
    assert waiter.poll() is None
    release(fifo)
    code, out, _ = finish(waiter)
    assert code == 0 and out.decode().split() == ["ok", "completed", "gate", "completed"]

    bad = daemon.run("wait", "bad")  # failed once, retried, then dead: its exit code
    assert bad.returncode == 7 and "bad  dead: exit code 7" in bad.stdout
    assert [a["exit_code"] for a in daemon.job("bad")["history"]] == [7, 7]
    slow = daemon.run("wait", "slow")  # dead without an exit code (timed out)
    assert slow.returncode == EXIT_WAIT_DEAD and "timed out" in slow.stdout
    both = daemon.run("wait", "ok", "slow", "bad")  # the first that did not complete
    assert both.returncode == EXIT_WAIT_DEAD

    with daemon.client() as c:
        view = c.wait(["bad", "ok"])
    assert view["timed_out"] is False
    assert [(j["id"], j["state"], j["final"], j["last_exit_code"]) for j in view["jobs"]] == [
        ("bad", "dead", True, 7),
        ("ok", "completed", True, 0),
    ]


def test_wait_timeout_and_unknown_ids(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "held", "--", "true")  # no workers: stays pending
    started = time.monotonic()
    timed = daemon.run("wait", "held", "--timeout", "0.3")
    assert time.monotonic() - started >= 0.3
    assert timed.returncode == EXIT_WAIT_TIMEOUT
    assert "held  pending (not final yet)" in timed.stdout
    as_json = daemon.run("wait", "held", "--timeout", "0", "--json")
    assert as_json.returncode == EXIT_WAIT_TIMEOUT and '"timed_out": true' in as_json.stdout

    unknown = daemon.run("wait", "held", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "queuectl: no job with id 'nope'"
    assert daemon.run("wait").returncode == 2  # no id: misuse
    assert daemon.run("logs", "-f", "nope").returncode == 1
    assert daemon.job("held")["state"] == "pending"  # nothing changed


def test_wait_ends_when_its_client_hangs_up(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "p", "--", "true")
    waiter = spawn(daemon, "wait", "p")
    wait_for(lambda: daemon.cli_json("metrics")["connections"] >= 2, what="the waiter to connect")
    waiter.kill()
    waiter.wait()
    # The daemon let go of the request with its connection.
    wait_for(lambda: daemon.cli_json("metrics")["connections"] == 1, what="the waiter to go")
    daemon.cli("worker", "start", "--count", "1")
    assert daemon.run("wait", "p").returncode == 0


def test_wait_and_follow_end_when_a_job_is_cancelled_or_killed(
    daemon: QueueDaemon, fifo: Path
) -> None:
    daemon.cli("enqueue", "--id", "later", "--delay", "1h", "--", "true")  # waiting
    waiter = spawn(daemon, "wait", "later")
    follower = spawn(daemon, "logs", "-f", "later")
    wait_for(lambda: daemon.cli_json("metrics")["connections"] >= 3, what="both to connect")
    daemon.cli("cancel", "later")
    code, out, _ = finish(waiter)
    assert code == EXIT_WAIT_CANCELLED and out.decode().startswith("later  cancelled: cancelled by")
    assert finish(follower)[0] == 0

    daemon.cli("enqueue", "--id", "run", "--", f"echo started; read x < {fifo}")
    daemon.cli("worker", "start", "--count", "1")
    waiter = spawn(daemon, "wait", "run")
    follower = spawn(daemon, "logs", "-f", "run")
    assert follower.stdout is not None
    read_until(follower.stdout.fileno(), b"started\n")
    daemon.cli("kill", "run")
    assert finish(waiter)[0] == EXIT_WAIT_CANCELLED
    assert finish(follower) == (0, b"", b"")
    assert daemon.job("run")["state"] == "cancelled"
