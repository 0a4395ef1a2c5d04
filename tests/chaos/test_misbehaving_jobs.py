"""Misbehaving jobs: floods of output, ignored SIGTERM, escaping grandchildren, closed
output, stdin readers, deaths by signal, and commands that are not valid text.

Each job runs as ``sh -c COMMAND`` in its own process group; ending a job means
SIGTERM to the group, ``kill_grace`` seconds, SIGKILL to the group, and anything
left in the group is killed when the shell exits.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from queuectl.protocol import JobView
from tests.chaos.chaoslib import DaemonProcess, RawConn, rss_kb, wait_until

LOG_MAX = 64 * 1024


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> Iterator[DaemonProcess]:
    d = make_daemon(env={"QUEUECTLD_KILL_GRACE": "0.5", "QUEUECTLD_LOG_MAX_BYTES": str(LOG_MAX)})
    d.start()
    with d.client() as c:
        c.set_workers(2)
    yield d


def run(daemon: DaemonProcess, command: str, job_id: str, **kw: Any) -> JobView:
    """Enqueue with no retries and wait for the job's final state."""
    with daemon.client() as c:
        c.enqueue(command, id=job_id, max_retries=0, **kw)
        return wait_until(  # type: ignore[no-any-return]
            lambda: (j := c.get_job(job_id))["state"] in ("completed", "dead") and j,
            60,
            f"job {job_id} to finish",
        )


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_gigabyte_of_output_is_capped_and_memory_stays_flat(daemon: DaemonProcess) -> None:
    wait_until(lambda: len(daemon.executors()) == 2, 10, "the workers")
    before_daemon, before_workers = daemon.rss_kb(), max(rss_kb(w) for w in daemon.executors())
    peaks = {"daemon": before_daemon, "worker": before_workers}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peaks["daemon"] = max(peaks["daemon"], daemon.rss_kb())
                for w in daemon.executors():
                    peaks["worker"] = max(peaks["worker"], rss_kb(w))
            except (OSError, AssertionError):
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        job = run(daemon, "head -c 1000000000 /dev/zero; echo tail >&2", "flood", timeout=120)
    finally:
        done.set()
        sampler.join()
    assert job["state"] == "completed"
    log = (daemon.log_dir / "job_flood.txt").read_bytes()
    assert len(log) < 2 * LOG_MAX + 4096
    assert f"output truncated: {1_000_000_000 - LOG_MAX} more bytes not kept".encode() in log
    assert b"tail" in log  # stderr is kept separately
    assert peaks["daemon"] - before_daemon < 20 * 1024, peaks
    assert peaks["worker"] - before_workers < 20 * 1024, peaks


def test_job_ignoring_sigterm_is_killed_after_the_grace(
    daemon: DaemonProcess, scratch: Path
) -> None:
    pidfile = scratch / "pid"
    started = time.monotonic()
    job = run(daemon, f"trap '' TERM; echo $$ > {pidfile}; sleep 60", "stubborn", timeout=1)
    elapsed = time.monotonic() - started
    assert job["state"] == "dead"
    (attempt,) = job["history"]
    assert attempt["outcome"] == "timeout" and "timed out after 1s" in attempt["error"]
    assert elapsed < 10, elapsed  # 1 s timeout + 0.5 s grace, not the 60 s sleep
    assert gone(int(pidfile.read_text()))


def test_background_grandchild_is_ended_with_the_job(daemon: DaemonProcess, scratch: Path) -> None:
    pidfile = scratch / "pid"
    job = run(daemon, f"sleep 60 & echo $! > {pidfile}; echo parent done", "forker")
    assert job["state"] == "completed"
    grandchild = int(pidfile.read_text())
    wait_until(lambda: gone(grandchild), 5, "the grandchild to be killed")


def test_grandchild_holding_the_output_pipe_does_not_hang_the_worker(
    daemon: DaemonProcess, scratch: Path
) -> None:
    """A daemonised child (own session) escapes the group but keeps stdout open: the
    worker gives up on the pipe after a short drain instead of waiting for it."""
    pidfile = scratch / "pid"
    command = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' & sleep 0.2; echo ok"
    started = time.monotonic()
    job = run(daemon, command, "escaper")
    assert job["state"] == "completed" and time.monotonic() - started < 10
    escaped = int(pidfile.read_text())
    # It left the job's process group on purpose (setsid): not ours to kill; clean up.
    os.kill(escaped, 9)


def test_job_closing_its_output_early(daemon: DaemonProcess) -> None:
    job = run(daemon, "echo before; exec >&- 2>&-; sleep 0.2; exit 0", "closer")
    assert job["state"] == "completed"
    assert b"before" in (daemon.log_dir / "job_closer.txt").read_bytes()


def test_job_reading_stdin_gets_eof(daemon: DaemonProcess) -> None:
    job = run(daemon, "cat; read line || echo eof", "reader", timeout=5)
    assert job["state"] == "completed"
    assert b"eof" in (daemon.log_dir / "job_reader.txt").read_bytes()


def test_job_dying_by_signal_is_reported_as_signaled(daemon: DaemonProcess) -> None:
    job = run(daemon, "kill -SEGV $$", "segv")
    assert job["state"] == "dead"
    (attempt,) = job["history"]
    assert attempt["outcome"] == "signaled"
    assert attempt["exit_code"] is None
    assert "signal 11 SIGSEGV" in attempt["error"]


# -- commands that are not text --------------------------------------------------------

HELLO = msgpack.packb({"hello": "test", "version": 1})


def _raw_enqueue(daemon: DaemonProcess, body: bytes) -> dict[str, Any] | None:
    with RawConn(daemon.socket) as conn:
        conn.frame(HELLO)
        assert conn.recv_frame() is not None
        conn.frame(body)
        return conn.recv_frame()


def _request(command: Any) -> bytes:
    return msgpack.packb(
        {"rid": 1, "op": "enqueue", "args": {"command": command}}, use_bin_type=True
    )


def test_nul_and_invalid_utf8_are_refused_at_enqueue(daemon: DaemonProcess) -> None:
    # msgpack str with a NUL: a clear invalid_request.
    reply = _raw_enqueue(daemon, _request("echo a\x00b"))
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request"
    assert "NUL" in reply["error"]["message"]
    # msgpack bin (raw bytes, valid or not as UTF-8): the command must be a string.
    for raw in (b"echo hi", b"echo \xff\xfe"):
        reply = _raw_enqueue(daemon, _request(raw))
        assert reply is not None and reply["ok"] is False
        assert reply["error"]["code"] == "invalid_request"
        assert "must be a string" in reply["error"]["message"]
    # msgpack str holding invalid UTF-8 cannot be decoded: an error frame answering the
    # request's rid says why, then the connection is closed; nothing stored.
    bad = _request("echo XX").replace(b"echo XX", b"echo \xff\xfe")
    with RawConn(daemon.socket) as conn:
        conn.frame(HELLO)
        assert conn.recv_frame() is not None
        conn.frame(bad)
        reply = conn.recv_frame()
        assert reply is not None, "the connection closed without an error frame"
        assert reply["rid"] == 1 and reply["ok"] is False
        assert reply["error"]["code"] == "protocol"
        assert "not valid UTF-8" in reply["error"]["message"]
        assert conn.closed_by_peer()
    # Through the command line: exit status 1 and one sentence, no traceback.
    for args in (
        ("enqueue", "--", "echo \udcff"),  # an argv byte that is not UTF-8
        ("enqueue", '{"command": "echo \\udcff"}'),  # a lone surrogate in JSON
        ("enqueue", '{"command": "echo a\\u0000b"}'),  # NUL in JSON
    ):
        result = daemon.cli(*args)
        assert result.returncode == 1, result
        err = result.stderr.decode(errors="replace")
        assert err.startswith("queuectl: ") and "Traceback" not in err, err
    with daemon.client() as c:
        assert c.list_jobs()[1] == 0
