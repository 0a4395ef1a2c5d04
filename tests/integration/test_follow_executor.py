"""A real executor process forwards a job's output only while the job is followed."""

from __future__ import annotations

import itertools
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl.wire import FrameBuffer
from queuectld.execproto import Follow, Revoke, RunJob, SetSlots, batch_items, pack_batch
from tests.harness import TAG_VAR, clean_env, wait_for

pytestmark = pytest.mark.timeout(60)


class Channel:
    """``python -m queuectld.executor`` on pipes, spoken to as the daemon does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "queuectld.executor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=clean_env({TAG_VAR: str(tmp)}),
        )
        self.frames = FrameBuffer()
        self.pending: list[dict[str, Any]] = []

    def send(self, *msgs: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(pack_batch(m.to_wire() for m in msgs))
        self.proc.stdin.flush()

    def run(self, job_id: str, command: str, log_max_bytes: int = 1 << 20) -> RunJob:
        return RunJob(
            job_id=job_id,
            attempt=1,
            command=command,
            cwd=str(self.tmp),
            timeout=30.0,
            kill_grace=1.0,
            log_path=str(self.tmp / f"job_{job_id}.txt"),
            log_max_bytes=log_max_bytes,
        )

    def messages(self, timeout: float = 20.0) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                yield self.pending.pop(0)
            left = deadline - time.monotonic()
            assert left > 0, "no message from the executor in time"
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                assert data, "the executor exited"
                for frame in self.frames.feed(data):
                    self.pending += batch_items(frame)

    def until(self, kind: str, job_id: str) -> list[dict[str, Any]]:
        """Messages up to and including the first ``kind`` message about ``job_id``."""
        seen = []
        for msg in self.messages():
            seen.append(msg)
            if msg["kind"] == kind and msg.get("job_id") == job_id:
                return seen
        raise AssertionError("unreachable")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Channel]:
    ch = Channel(tmp_path)
    yield ch
    if ch.proc.poll() is None:
        ch.close()


def outputs(msgs: list[dict[str, Any]], job_id: str) -> list[tuple[str, int, bytes]]:
    return [
        (m["stream"], m["offset"], m["data"])
        for m in msgs
        if m["kind"] == "output" and m["job_id"] == job_id
    ]


def test_output_is_sent_only_while_followed(channel: Channel, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    channel.send(SetSlots(1), channel.run("quiet", "echo not followed"))
    done = channel.until("finished", "quiet")
    assert outputs(done, "quiet") == []  # nobody follows: nothing but the outcome

    channel.send(channel.run("j", f"echo a; read x < {gate}; echo b"))
    channel.until("started", "j")
    channel.send(Follow("j", True))  # what was kept so far, then as it comes
    got = channel.until("output", "j")
    assert outputs(got, "j") == [("stdout", 0, b"a\n")]
    # Stop following; a job waiting for the slot and handed back marks when the executor
    # has read that (messages are handled in order).
    channel.send(Follow("j", False), channel.run("marker", "true"), Revoke(["marker"]))
    channel.until("revoked", "marker")
    with open(gate, "w") as fh:
        fh.write("go\n")
    assert outputs(channel.until("finished", "j"), "j") == []
    assert b"a\nb\n" in (tmp_path / "job_j.txt").read_bytes()  # the log has it all


def test_a_job_followed_before_it_starts_is_sent_from_its_start(
    channel: Channel, tmp_path: Path
) -> None:
    channel.send(SetSlots(0), channel.run("w", "echo one; echo two >&2"), Follow("w", True))
    channel.send(SetSlots(1))
    got = channel.until("finished", "w")
    assert sorted(outputs(got, "w")) == [("stderr", 0, b"two\n"), ("stdout", 0, b"one\n")]
    kinds = [m["kind"] for m in got if m.get("job_id") == "w"]
    assert kinds.index("finished") > max(i for i, k in enumerate(kinds) if k == "output")


def test_a_late_follower_gets_both_kept_ends_with_their_offsets(
    channel: Channel, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    written = b"".join(b"%d\n" % i for i in range(1, 1001))
    command = f"seq 1 1000; : > written; read x < {gate}"
    channel.send(SetSlots(1), channel.run("big", command, log_max_bytes=200))
    wait_for(lambda: (tmp_path / "written").exists(), what="the output to be written")
    channel.send(Follow("big", True))  # the cap keeps the first 100 bytes and the last 100
    got: list[tuple[str, int, bytes]] = []
    for msg in channel.messages():
        got += outputs([msg], "big")
        if got and got[-1][1] + len(got[-1][2]) == len(written):
            break
    assert got[0] == ("stdout", 0, written[:100])
    rest = got[1:]
    assert rest[0][1] >= 100  # what was cut is not sent: the offsets show it
    for (_, at, data), (_, following, _) in itertools.pairwise(rest):
        assert at + len(data) == following
    assert b"".join(data for _, _, data in rest) == written[rest[0][1] :]
    with open(gate, "w") as fh:
        fh.write("go\n")
    channel.until("finished", "big")
