"""Protocol fuzzing against a real daemon (hypothesis).

Random bytes, truncated frames, huge declared lengths, valid msgpack with wrong
types, unknown operations, deep nesting, a slow client, idle connections up to the
limit. After each: the daemon is up, answers a well-formed client, its memory is
bounded, and the store is exactly as before, except for requests it accepted.
"""

from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuectl.protocol import ARGS_BY_OP, MAX_FRAME_BYTES, Op
from tests.chaos.chaoslib import DaemonProcess, RawConn, wait_until

MAX_CONNECTIONS = 50
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HELLO = msgpack.packb({"hello": "fuzz", "version": 1})
# Operations a fuzzer may send. Not shutdown (it stops the daemon, by design), not
# workers_set (a valid random count up to 1,024 would start that many processes), not
# watch (a valid one streams until the client hangs up).
SKIPPED_OPS = {Op.SHUTDOWN, Op.WORKERS_SET, Op.WORKERS_STOP, Op.WATCH}
FUZZ_OPS = [op for op in Op if op not in SKIPPED_OPS]
OP_NAMES = {op.value for op in Op}
MUTATING = {
    Op.ENQUEUE,
    Op.ENQUEUE_BATCH,
    Op.CONFIG_SET,
    Op.CANCEL,
    Op.RETRY,
    Op.QUEUE_SET,
}


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@dataclass
class Target:
    """The daemon under fuzzing and what its store must hold."""

    daemon: DaemonProcess
    rss_kb: int
    jobs: dict[str, str]
    settings: dict[str, Any]
    accepted: list[tuple[str, Any]] = field(default_factory=list)

    def snapshot(self) -> tuple[dict[str, str], dict[str, Any], dict[str, int]]:
        with self.daemon.client() as c:
            jobs = {j["id"]: j["state"] for j in c.list_jobs(limit=100_000)[0]}
            config = {s["key"]: s["value"] for s in c.config_list()}
            counts = dict(c.status()["counts"])
        return jobs, config, counts

    def note(self, op: Op, reply: dict[str, Any] | None) -> None:
        """Remember a mutating request the daemon accepted (its effect is allowed)."""
        if reply is None or reply.get("ok") is not True or op not in MUTATING:
            return
        result = reply["result"]
        if op is Op.ENQUEUE:
            self.jobs[result["id"]] = result["state"]  # pending, or waiting for a delay
        elif op is Op.ENQUEUE_BATCH:
            with self.daemon.client() as c:
                for job_id in result["ids"]:
                    self.jobs[job_id] = c.get_job(job_id)["state"]
        elif op in (Op.CANCEL, Op.RETRY):
            self.jobs.update((j["id"], j["state"]) for j in result["jobs"])
        elif op is Op.CONFIG_SET:
            self.settings[result["key"]] = result["value"]
        self.accepted.append((op.value, result))

    def check(self) -> None:
        """Alive, answering, memory bounded, store unchanged but for accepted requests."""
        assert self.daemon.alive(), f"queuectld died:\n{self.daemon.log_tail()}"
        with self.daemon.client(timeout=10) as c:
            assert c.ping()["pong"] is True
        jobs, config, counts = self.snapshot()
        assert jobs == self.jobs, "the store changed under refused requests"
        assert config == self.settings
        assert sum(counts.values()) == len(self.jobs) and counts["processing"] == 0
        rss = self.daemon.rss_kb()
        assert rss < self.rss_kb + 64 * 1024, f"RSS grew from {self.rss_kb} to {rss} kB"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    scratch = Path(tempfile.mkdtemp(prefix="qc-fuzz-"))
    daemon = DaemonProcess(
        scratch / "home", env={"QUEUECTLD_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    )
    daemon.start()
    try:
        with daemon.client() as c:
            # Jobs that wait a day: no worker touches them, so any change is the fuzzer's.
            for i in range(5):
                c.enqueue("echo seeded", id=f"seed{i}", delay=86400)
        t = Target(daemon, 0, {}, {})
        t.jobs, t.settings, _ = t.snapshot()
        time.sleep(0.2)
        t.rss_kb = daemon.rss_kb()
        yield t
    finally:
        daemon.cleanup()
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


def exchange(target: Target, data: bytes, hello: bool, timeout: float = 5.0) -> list[Any]:
    """Send ``data`` (after a hello if asked), half-close, and read every frame until the
    daemon hangs up; it must hang up."""
    with RawConn(target.daemon.socket, timeout=timeout) as conn:
        if hello:
            conn.frame(HELLO)
            reply = conn.recv_frame()
            assert reply is not None and reply.get("ok") is True
        try:
            conn.send(data)
            conn.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon hung up already: fine
        frames = []
        while True:
            try:
                msg = conn.recv_frame()
            except TimeoutError:
                raise AssertionError("the daemon kept a finished connection open") from None
            except Exception:
                break  # not a frame: garbage is never echoed, but be safe
            if msg is None:
                break
            frames.append(msg)
        return frames


# -- random bytes -------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096), hello=st.booleans())
def test_random_bytes(target: Target, data: bytes, hello: bool) -> None:
    exchange(target, data, hello)
    assert target.daemon.alive()


def test_random_bytes_left_the_daemon_healthy(target: Target) -> None:
    target.check()


# -- truncated frames and huge lengths -----------------------------------------------


@FUZZ
@given(
    n=st.integers(0, 3),
    cut=st.floats(0, 1, exclude_max=True),
    hello=st.booleans(),
)
def test_truncated_frames(target: Target, n: int, cut: float, hello: bool) -> None:
    """A request cut anywhere before its end is never executed."""
    body = msgpack.packb(
        {"rid": 1, "op": "enqueue", "args": {"command": "true", "id": f"trunc{n}"}}
    )
    whole = frame(body)
    exchange(target, whole[: int(len(whole) * cut)], hello)


@FUZZ
@given(
    length=st.one_of(st.just(0), st.integers(MAX_FRAME_BYTES + 1, 2**32 - 1)),
    tail=st.binary(max_size=64),
    hello=st.booleans(),
)
def test_huge_or_zero_declared_lengths_close_at_once(
    target: Target, length: int, tail: bytes, hello: bool
) -> None:
    """The header alone is refused: the daemon hangs up without waiting for a body."""
    with RawConn(target.daemon.socket, timeout=5) as conn:
        if hello:
            conn.frame(HELLO)
            assert conn.recv_frame() is not None
        conn.send(struct.pack(">I", length) + tail)
        assert conn.closed_by_peer(timeout=5), "a bad frame length did not close the connection"


def test_framing_fuzz_left_the_daemon_healthy(target: Target) -> None:
    target.check()


# -- valid msgpack, wrong content ------------------------------------------------------

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Op, dict[str, Any]]:
    """A request of a known operation whose fields hold random values of random types."""
    op = draw(st.sampled_from(FUZZ_OPS))
    fields = list(getattr(ARGS_BY_OP[op], "__dataclass_fields__", {}))
    args = {}
    for name in fields:
        if draw(st.booleans()):
            args[name] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        args[draw(st.text(max_size=10))] = draw(values)
    return op, args


@FUZZ
@given(request=requests())
def test_wrong_types_are_refused_clearly(
    target: Target, request: tuple[Op, dict[str, Any]]
) -> None:
    """Each request gets a reply (an error for anything malformed) on a connection that
    stays usable; nothing refused changes the store."""
    op, args = request
    with RawConn(target.daemon.socket, timeout=10) as conn:
        conn.frame(HELLO)
        assert conn.recv_frame() is not None
        conn.frame(msgpack.packb({"rid": 7, "op": op.value, "args": args}))
        reply = conn.recv_frame()
        assert reply is not None and reply["rid"] == 7, reply
        if reply["ok"] is False:
            assert reply["error"]["code"] in ("invalid_request", "not_found", "conflict"), reply
            assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        target.note(op, reply)
        conn.frame(msgpack.packb({"rid": 8, "op": "ping", "args": {}}))
        pong = conn.recv_frame()
        assert pong is not None and pong["ok"] is True


unknown_ops = values.filter(lambda op: not (isinstance(op, str) and op in OP_NAMES))


@FUZZ
@given(op=unknown_ops, rid=values | st.integers(-(2**63), 2**64 - 1), args=values)
def test_unknown_operations_and_envelopes(target: Target, op: Any, rid: Any, args: Any) -> None:
    """Unknown ops get an error reply; a frame without an integer rid ends the connection."""
    msg = {"rid": rid, "op": op, "args": args}
    with RawConn(target.daemon.socket, timeout=10) as conn:
        conn.frame(HELLO)
        assert conn.recv_frame() is not None
        conn.frame(msgpack.packb(msg))
        if isinstance(rid, int) and not isinstance(rid, bool):
            reply = conn.recv_frame()
            assert reply is not None and reply["ok"] is False
            assert reply["error"]["code"] in ("invalid_request", "internal"), reply
        else:  # an error frame (no rid to answer to: 0), or a hang-up
            reply = conn.recv_frame()
            assert reply is None or reply["error"]["code"] == "protocol", reply


@pytest.mark.parametrize("depth", [100, 1000, 5000, 1_000_000])
def test_deep_nesting(target: Target, depth: int) -> None:
    nested = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    as_args = b"\x83" + msgpack.packb("rid") + b"\x01" + msgpack.packb("op")
    as_args += msgpack.packb("enqueue") + msgpack.packb("args")
    as_args += b"\x81" + msgpack.packb("command") + nested
    frames = exchange(target, frame(as_args), hello=True)
    assert all(f.get("ok") is False for f in frames)
    as_op = b"\x83" + msgpack.packb("rid") + b"\x01" + msgpack.packb("op") + nested
    as_op += msgpack.packb("args") + b"\x80"
    frames = exchange(target, frame(as_op), hello=True)
    assert all(f.get("ok") is False for f in frames)


def test_content_fuzz_left_the_daemon_healthy(target: Target) -> None:
    target.check()


# -- slow and idle clients ------------------------------------------------------------


def test_slow_client_does_not_block_others(target: Target) -> None:
    """A client dribbling one byte at a time: the daemon serves everyone else meanwhile."""
    body = msgpack.packb({"rid": 1, "op": "ping", "args": {}})
    data = frame(HELLO) + frame(body)
    served = []
    stop = threading.Event()

    def others() -> None:
        with target.daemon.client(timeout=5) as c:
            while not stop.is_set():
                t = time.monotonic()
                c.status()
                served.append(time.monotonic() - t)
                time.sleep(0.05)

    helper = threading.Thread(target=others)
    helper.start()
    try:
        with RawConn(target.daemon.socket, timeout=10) as conn:
            hello_len = 4 + len(HELLO)
            for i, byte in enumerate(data):
                conn.send(bytes([byte]))
                if i == hello_len - 1:
                    assert conn.recv_frame() is not None
                time.sleep(3.0 / len(data))
            reply = conn.recv_frame()
            assert reply is not None and reply["ok"] is True
    finally:
        stop.set()
        helper.join()
    assert len(served) > 20 and max(served) < 1.0, served


def test_idle_connections_up_to_the_limit_then_a_clean_refusal(target: Target) -> None:
    with target.daemon.client() as c:
        wait_until(lambda: c.metrics()["connections"] == 1, 10, "earlier connections to close")
    idle: list[RawConn] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            conn = RawConn(target.daemon.socket, timeout=10)
            idle.append(conn)
            conn.frame(HELLO)
            assert conn.recv_frame() is not None
        with RawConn(target.daemon.socket, timeout=10) as extra:
            reply = extra.recv_frame()
            assert reply is not None and reply["ok"] is False
            assert reply["error"]["code"] == "unavailable"
            assert "too many" in reply["error"]["message"]
            assert extra.closed_by_peer()
        # The idle ones still work.
        idle[0].frame(msgpack.packb({"rid": 3, "op": "ping", "args": {}}))
        assert idle[0].recv_frame()["ok"] is True  # type: ignore[index]
    finally:
        for conn in idle:
            conn.close()
    wait_until(lambda: _connects(target), 10, "a free connection slot")
    target.check()


def _connects(target: Target) -> bool:
    try:
        with target.daemon.client(timeout=5) as c:
            c.ping()
        return True
    except Exception:
        return False


def test_client_hanging_up_mid_request_leaves_the_daemon_consistent(
    make_daemon: Any,
) -> None:
    """A request the daemon started is carried through even if its client hangs up:
    a config_set whose commit is queued behind a big batch must not end stored on disk
    but missing from the running daemon's settings."""
    daemon = make_daemon()
    daemon.start()
    big = [{"id": f"big{i}", "command": "true", "delay": 86400} for i in range(10_000)]
    batch_done = threading.Event()

    def enqueue_big() -> None:
        with daemon.client() as c:
            c.enqueue_batch(big)
        batch_done.set()

    filler = threading.Thread(target=enqueue_big)
    filler.start()
    time.sleep(0.05)  # the batch is on its way to the store thread
    with RawConn(daemon.socket, timeout=10) as conn:
        conn.frame(HELLO)
        assert conn.recv_frame() is not None
        conn.frame(
            msgpack.packb(
                {"rid": 1, "op": "config_set", "args": {"key": "max-retries", "value": "7"}}
            )
        )
        time.sleep(0.02)  # the handler runs and waits for the commit
    filler.join()
    assert batch_done.is_set()
    with daemon.client() as c:
        # The store thread runs calls in order: once a later write is answered, the
        # config_set queued before it has been committed and its handler has resumed.
        c.enqueue("true", id="barrier")
        live = c.config_get("max-retries")["value"]
    daemon.stop()
    daemon.start()
    with daemon.client() as c:
        stored = c.config_get("max-retries")["value"]
    assert live == stored, f"running daemon says {live}, its database says {stored}"
