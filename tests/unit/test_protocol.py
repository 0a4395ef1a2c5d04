"""The wire protocol: framing, frame limits, incremental decoding, argument validation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuectl.errors import (
    Conflict,
    InternalError,
    InvalidRequest,
    NotFound,
    ProtocolError,
    QueuectlError,
    error_from_code,
)
from queuectl.protocol import (
    ARGS_BY_OP,
    HEADER,
    MAX_BATCH_JOBS,
    MAX_COMMAND_BYTES,
    MAX_FRAME_BYTES,
    MAX_ID_CHARS,
    MAX_RETRIES_LIMIT,
    MAX_WORKERS,
    EnqueueArgs,
    EnqueueBatchArgs,
    ErrorBody,
    FrameBuffer,
    Hello,
    JobIdArgs,
    ListArgs,
    LogsArgs,
    NoArgs,
    Op,
    Outcome,
    Reply,
    Request,
    WatchArgs,
    WorkersArgs,
    frame_length,
    pack,
    parse_args,
    unpack,
)
from queuectld.execproto import JobFinished, RunJob, batch_items, pack_batch

# Values msgpack carries and unpack gives back unchanged (lists stay lists).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)
messages = st.dictionaries(st.text(max_size=20), values, max_size=5)


# -- framing ---------------------------------------------------------------------


@settings(max_examples=60)
@given(messages)
def test_pack_unpack_round_trip(msg: dict[str, Any]) -> None:
    frame = pack(msg)
    length = frame_length(frame[: HEADER.size])
    assert length == len(frame) - HEADER.size
    assert unpack(frame[HEADER.size :]) == msg


def test_pack_refuses_a_message_over_the_frame_limit() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        pack({"data": b"x" * MAX_FRAME_BYTES})


def test_frame_length_limits() -> None:
    assert frame_length(HEADER.pack(1)) == 1
    assert frame_length(HEADER.pack(MAX_FRAME_BYTES)) == MAX_FRAME_BYTES
    for bad in (0, MAX_FRAME_BYTES + 1, 2**32 - 1):
        with pytest.raises(ProtocolError, match="outside"):
            frame_length(HEADER.pack(bad))
    assert frame_length(HEADER.pack(10), max_bytes=10) == 10
    with pytest.raises(ProtocolError):
        frame_length(HEADER.pack(11), max_bytes=10)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of two with one element: truncated
        msgpack.packb([1, 2, 3]),  # valid msgpack, but not a map
        msgpack.packb("hello"),
        msgpack.packb(7),
        msgpack.packb({1: "int key"}),
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\xff" * 16,
    ],
)
def test_unpack_refuses_anything_but_a_map(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(body)


def test_unpack_refuses_non_string_keys() -> None:
    # The docstring's contract: "a msgpack map with string keys".
    with pytest.raises(ProtocolError):
        unpack(msgpack.packb({b"rid": 1, "op": "ping"}, use_bin_type=True))


@given(st.binary(max_size=200))
def test_unpack_raises_only_protocol_errors_on_garbage(body: bytes) -> None:
    try:
        msg = unpack(body)
    except ProtocolError:
        return
    assert isinstance(msg, dict)


# -- FrameBuffer -----------------------------------------------------------------


def test_frame_buffer_byte_by_byte() -> None:
    msgs = [{"rid": 1, "op": "ping"}, {"rid": 2, "args": {"x": [1, 2, "three"]}}]
    stream = b"".join(pack(m) for m in msgs)
    buf = FrameBuffer()
    out: list[dict[str, Any]] = []
    for i in range(len(stream)):
        out += buf.feed(stream[i : i + 1])
    assert out == msgs


def test_frame_buffer_concatenated_frames_in_one_feed() -> None:
    msgs = [{"n": i} for i in range(50)]
    buf = FrameBuffer()
    assert buf.feed(b"".join(pack(m) for m in msgs)) == msgs
    assert buf.feed(b"") == []


def test_frame_buffer_keeps_a_partial_frame_until_it_is_complete() -> None:
    frame = pack({"big": "y" * 1000})
    buf = FrameBuffer()
    assert buf.feed(frame[:2]) == []  # not even a whole header
    assert buf.feed(frame[2:500]) == []
    assert buf.feed(frame[500:] + pack({"next": True})[:3]) == [{"big": "y" * 1000}]


def test_frame_buffer_refuses_an_oversized_declared_length() -> None:
    buf = FrameBuffer(max_bytes=100)
    with pytest.raises(ProtocolError):
        buf.feed(HEADER.pack(101) + b"x")
    with pytest.raises(ProtocolError):
        FrameBuffer().feed(HEADER.pack(0))


@settings(max_examples=40)
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_frame_buffer_any_split(msgs: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(pack(m) for m in msgs)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=10)))
    buf = FrameBuffer()
    out: list[dict[str, Any]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += buf.feed(stream[start:cut])
        start = cut
    assert out == msgs


# -- envelopes -------------------------------------------------------------------


def test_hello_and_request_from_wire() -> None:
    assert Hello.from_wire(Hello().to_wire()) == Hello()
    for bad in ({}, {"hello": "x"}, {"hello": 1, "version": 1}, {"hello": "x", "version": True}):
        with pytest.raises(ProtocolError):
            Hello.from_wire(bad)
    req = Request(7, Op.ENQUEUE, {"command": "true"})
    assert Request.from_wire(req.to_wire()) == req
    with pytest.raises(ProtocolError):
        Request.from_wire({"rid": "7", "op": "ping"})
    with pytest.raises(ProtocolError):
        Request.from_wire({"rid": True, "op": "ping"})
    with pytest.raises(InvalidRequest, match="unknown operation"):
        Request.from_wire({"rid": 1, "op": "drop_tables"})
    with pytest.raises(InvalidRequest, match="must be a map"):
        Request.from_wire({"rid": 1, "op": "ping", "args": [1]})


def test_reply_round_trip_and_error_codes() -> None:
    ok = Reply(3, result={"a": 1})
    assert Reply.from_wire(ok.to_wire()) == ok
    err = Reply(4, error=ErrorBody("not_found", "no job with id 'x'"))
    assert Reply.from_wire(err.to_wire()) == err
    with pytest.raises(ProtocolError):
        Reply.from_wire({"rid": 1, "ok": False})
    assert isinstance(error_from_code("not_found", "m"), NotFound)
    assert isinstance(error_from_code("conflict", "m"), Conflict)
    unknown = error_from_code("from_the_future", "m")
    assert isinstance(unknown, InternalError)
    assert str(unknown) == "m"


def test_executor_messages_round_trip_in_one_batch_frame() -> None:
    run = RunJob("a", 1, "true", "/", 10.0, 5.0, "/tmp/x", 1024)
    done = JobFinished("a", 1, Outcome.TIMEOUT, None, "timed out", 1.0, 2.0)
    frame = unpack(pack_batch([run.to_wire(), done.to_wire()])[HEADER.size :])
    first, second = batch_items(frame)
    assert RunJob.from_wire(first) == run
    assert JobFinished.from_wire(second) == done


# -- argument validation ---------------------------------------------------------


def test_enqueue_args_accepts_a_plain_job_and_ints_for_floats() -> None:
    args = parse_args(EnqueueArgs, {"command": "echo hi", "id": "job-1.a_b", "timeout": 5})
    assert args.command == "echo hi"
    assert args.id == "job-1.a_b"
    assert args.timeout == 5.0 and isinstance(args.timeout, float)
    assert args.max_retries is None
    assert parse_args(EnqueueArgs, {"command": "x", "max_retries": None}).max_retries is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "missing the required field 'command'"),
        ({"id": "x"}, "missing the required field 'command'"),
        ({"command": ""}, "must not be empty"),
        ({"command": " \t\n"}, "must not be empty"),
        ({"command": 5}, "'command' must be a string"),
        ({"command": None}, "'command'"),
        ({"command": ["echo", "hi"]}, "'command' must be a string"),
        ({"command": b"echo"}, "'command' must be a string"),
        ({"command": "x", "foo": 1}, "unknown field 'foo'"),
        ({"command": "x", "max_retries": "3"}, "max_retries"),
        ({"command": "x", "max_retries": 1.5}, "max_retries"),
        ({"command": "x", "max_retries": True}, "max_retries"),
        ({"command": "x", "max_retries": -1}, "max_retries must be between"),
        ({"command": "x", "max_retries": MAX_RETRIES_LIMIT + 1}, "max_retries must be between"),
        ({"command": "x", "timeout": "10"}, "timeout"),
        ({"command": "x", "timeout": 0}, "timeout must be between"),
        ({"command": "x", "timeout": -1.0}, "timeout must be between"),
        ({"command": "x", "timeout": math.nan}, "timeout must be between"),
        ({"command": "x", "timeout": math.inf}, "timeout must be between"),
        ({"command": "x", "delay": -0.5}, "delay must be between"),
        ({"command": "x", "id": ""}, "must not be empty"),
        ({"command": "x", "id": "a" * (MAX_ID_CHARS + 1)}, "the limit is 128"),
        ({"command": "x", "id": "../etc/passwd"}, "may only use"),
        ({"command": "x", "id": ".hidden"}, "may only use"),
        ({"command": "x", "id": "-rf"}, "may only use"),
        ({"command": "x", "id": "a b"}, "may only use"),
        ({"command": "x", "id": 12}, "'id'"),
        ({"command": "x", "cwd": "relative/dir"}, "absolute"),
        ({"command": "a" * (MAX_COMMAND_BYTES + 1)}, "the limit is 65536"),
        ({"command": "é" * (MAX_COMMAND_BYTES // 2 + 1)}, "the limit is 65536"),  # bytes, not chars
        ({"command": "echo \x00"}, "NUL"),
        ({"command": "echo \udcff"}, "UTF-8"),
    ],
)
def test_enqueue_args_refused(args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_args(EnqueueArgs, args)
    assert message in info.value.message


def test_enqueue_args_limits_are_inclusive() -> None:
    assert parse_args(EnqueueArgs, {"command": "a" * MAX_COMMAND_BYTES}).command
    assert parse_args(EnqueueArgs, {"command": "x", "id": "a" * MAX_ID_CHARS}).id
    assert parse_args(EnqueueArgs, {"command": "x", "max_retries": MAX_RETRIES_LIMIT})


def test_parse_args_refuses_non_string_field_names() -> None:
    # bytes keys reach parse_args through msgpack maps nested in a request's args.
    with pytest.raises(InvalidRequest):
        parse_args(EnqueueArgs, {b"command": "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidRequest):
        parse_args(EnqueueArgs, {"command": "x", b"id": "y"})  # type: ignore[dict-item]


def test_batch_args() -> None:
    batch = parse_args(EnqueueBatchArgs, {"jobs": [{"command": "a"}, {"command": "b", "id": "x"}]})
    assert [a.command for a in batch.parsed()] == ["a", "b"]
    with pytest.raises(InvalidRequest, match="at least one"):
        parse_args(EnqueueBatchArgs, {"jobs": []})
    with pytest.raises(InvalidRequest, match="at most"):
        parse_args(EnqueueBatchArgs, {"jobs": [{"command": "x"}] * (MAX_BATCH_JOBS + 1)})
    with pytest.raises(InvalidRequest, match="must be a map"):
        parse_args(EnqueueBatchArgs, {"jobs": ["echo"]})
    bad = parse_args(EnqueueBatchArgs, {"jobs": [{"command": "a"}, {"command": ""}]})
    with pytest.raises(InvalidRequest, match="job 2 of the batch"):
        bad.parsed()


@pytest.mark.parametrize(
    ("cls", "args", "message"),
    [
        (WorkersArgs, {"count": -1}, "must not be negative"),
        (WorkersArgs, {"count": MAX_WORKERS + 1}, "between"),
        (WorkersArgs, {"count": "2"}, "must be an integer"),
        (WorkersArgs, {}, "missing"),
        (ListArgs, {"state": "zombie"}, "unknown state"),
        (ListArgs, {"limit": 0}, "limit"),
        (ListArgs, {"offset": -1}, "offset"),
        (JobIdArgs, {"id": "a/b"}, "may only use"),
        (JobIdArgs, {"id": "x", "extra": 1}, "unknown field"),
        (LogsArgs, {"id": "x", "max_bytes": 0}, "max_bytes"),
        (LogsArgs, {"id": "x", "max_bytes": MAX_FRAME_BYTES}, "max_bytes"),
        (WatchArgs, {"until_idle": 1}, "true or false"),
        (NoArgs, {"anything": 1}, "unknown field"),
    ],
)
def test_other_args_refused(cls: type[Any], args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_args(cls, args)
    assert message in info.value.message


def test_every_op_has_an_args_class() -> None:
    assert set(ARGS_BY_OP) == set(Op)
    for cls in ARGS_BY_OP.values():
        assert dataclasses.is_dataclass(cls)


field_names = st.sampled_from(
    ["command", "id", "max_retries", "timeout", "delay", "cwd", "bogus", ""]
)


@settings(max_examples=150)
@given(st.sampled_from(sorted(ARGS_BY_OP.values(), key=lambda c: c.__name__)), st.data())
def test_parse_args_only_ever_raises_invalid_request(cls: type[Any], data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(cls)] + ["bogus", ""]
    args = data.draw(st.dictionaries(st.sampled_from(names) | field_names, values, max_size=6))
    try:
        parsed = parse_args(cls, args)
    except InvalidRequest:
        return
    except QueuectlError as exc:  # pragma: no cover - would be a bug
        pytest.fail(f"{type(exc).__name__} instead of InvalidRequest: {exc}")
    assert isinstance(parsed, cls)
