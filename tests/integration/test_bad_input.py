"""Bad input gets a clear error, the right exit status, and changes nothing.

The CLI cases share one daemon without workers (every request here is refused, so the
queue does not move); each checks the exit status, the one-sentence error, and that
nothing was stored. The socket cases send garbage over a raw connection and check that
only that connection is closed and the daemon keeps serving everyone else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from queuectl.protocol import HEADER, PROTOCOL_VERSION, Hello, pack
from tests.harness import QueueDaemon, short_tmpdir

pytestmark = pytest.mark.timeout(60)

BIG_COMMAND = "echo " + "x" * (64 * 1024)  # over the 64 KiB limit
LONG_ID = "i" * 129


@pytest.fixture(scope="module")
def idle_daemon() -> Iterator[QueueDaemon]:
    """One daemon for the whole module, no workers, one job ``existing`` (pending)."""
    d = QueueDaemon(short_tmpdir())
    d.start()
    try:
        d.cli("enqueue", "--id", "existing", "--", "true")
        d.cli("enqueue", "--id", "second", "--", "true")
        yield d
    finally:
        d.cleanup()
        if not os.environ.get("QUEUECTL_TEST_KEEP"):
            shutil.rmtree(d.home, ignore_errors=True)


def snapshot(d: QueueDaemon) -> tuple[dict[str, int], list[str], dict[str, Any], list[str]]:
    with d.client() as c:
        jobs, _ = c.list_jobs(limit=1000)
        settings = {s["key"]: s["value"] for s in c.config_list()}
        counts = dict(c.status()["counts"])
    logs = sorted(os.listdir(d.log_dir)) if d.log_dir.exists() else []
    return counts, [j["id"] for j in jobs], settings, logs


DAEMON_REFUSALS: list[tuple[str, list[str], str]] = [
    # (name, argv, words the error must contain)
    ("missing-command", ["enqueue", '{"id":"x1"}'], "command"),
    ("empty-command", ["enqueue", '{"command":""}'], "empty"),
    ("blank-command", ["enqueue", '{"command":"   "}'], "empty"),
    ("empty-command-flag-form", ["enqueue", "--", ""], "empty"),
    ("command-not-a-string", ["enqueue", '{"command":5}'], "command"),
    ("command-a-list", ["enqueue", '{"command":["echo","hi"]}'], "command"),
    ("max-retries-a-string", ["enqueue", '{"command":"true","max_retries":"3"}'], "max_retries"),
    ("max-retries-negative", ["enqueue", '{"command":"true","max_retries":-1}'], "max_retries"),
    ("timeout-a-string", ["enqueue", '{"command":"true","timeout":"soon"}'], "timeout"),
    ("timeout-zero", ["enqueue", '{"command":"true","timeout":0}'], "timeout"),
    ("id-a-number", ["enqueue", '{"command":"true","id":7}'], "id"),
    ("unknown-field", ["enqueue", '{"command":"true","colour":1}'], "colour"),
    ("duplicate-id-json", ["enqueue", '{"id":"existing","command":"true"}'], "existing"),
    ("duplicate-id-flag", ["enqueue", "--id", "existing", "--", "true"], "already exists"),
    ("command-over-64k-json", ["enqueue", json.dumps({"command": BIG_COMMAND})], "65536"),
    ("command-over-64k-flag", ["enqueue", "--", BIG_COMMAND], "65536"),
    ("id-over-128", ["enqueue", "--id", LONG_ID, "--", "true"], "128"),
    ("id-with-slash", ["enqueue", "--id", "../../etc/x", "--", "true"], "id"),
    ("show-unknown", ["show", "nope"], "nope"),
    ("logs-unknown", ["logs", "nope"], "nope"),
    ("dlq-retry-unknown", ["dlq", "retry", "nope"], "nope"),
    ("dlq-retry-not-dead", ["dlq", "retry", "existing"], "not dead"),
    ("config-set-out-of-range", ["config", "set", "backoff-base", "0.5"], "backoff-base"),
    ("config-set-not-a-number", ["config", "set", "max-retries", "many"], "max-retries"),
    ("config-set-unknown", ["config", "set", "colour", "blue"], "colour"),
    ("config-get-unknown", ["config", "get", "colour"], "colour"),
]

USAGE_ERRORS: list[tuple[str, list[str]]] = [
    ("invalid-json", ["enqueue", '{"id":"x2","command":"true"']),
    ("invalid-json-quotes", ["enqueue", "{'command': 'true'}"]),
    ("no-job-at-all", ["enqueue"]),
    ("negative-count", ["worker", "start", "--count", "-1"]),
    ("count-not-a-number", ["worker", "start", "--count", "two"]),
    ("negative-max-retries-flag", ["enqueue", "--max-retries", "-1", "--", "true"]),
    ("zero-timeout-flag", ["enqueue", "--timeout", "0", "--", "true"]),
    ("flags-and-json", ["enqueue", "--id", "x3", '{"command":"true"}']),
    ("unknown-state", ["list", "--state", "zombie"]),
    ("unknown-command", ["frobnicate"]),
    ("unknown-flag", ["status", "--colour"]),
]


@pytest.mark.parametrize(
    ("argv", "words"),
    [pytest.param(argv, words, id=name) for name, argv, words in DAEMON_REFUSALS],
)
def test_refused_by_the_daemon_exit_1(
    idle_daemon: QueueDaemon, argv: list[str], words: str
) -> None:
    before = snapshot(idle_daemon)
    proc = idle_daemon.run(*argv)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    err = proc.stderr.strip()
    assert err.startswith("queuectl: ")
    assert "\n" not in err, "one sentence, one line"
    assert words in err
    assert "internal error" not in err
    assert snapshot(idle_daemon) == before


@pytest.mark.parametrize("argv", [pytest.param(argv, id=name) for name, argv in USAGE_ERRORS])
def test_usage_errors_exit_2(idle_daemon: QueueDaemon, argv: list[str]) -> None:
    before = snapshot(idle_daemon)
    proc = idle_daemon.run(*argv)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Error:" in proc.stderr
    assert snapshot(idle_daemon) == before


def test_invalid_json_says_where(idle_daemon: QueueDaemon) -> None:
    proc = idle_daemon.run("enqueue", '{"command": "true",}')
    assert proc.returncode == 2
    assert "not valid JSON" in proc.stderr and "column" in proc.stderr


def test_a_file_of_jobs_is_all_or_nothing(idle_daemon: QueueDaemon, tmp_path: Path) -> None:
    before = snapshot(idle_daemon)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"id":"f1","command":"true"}\n{"id":"f2",\n')
    proc = idle_daemon.run("enqueue", "--file", str(bad_json))
    assert proc.returncode == 2 and "line 2" in proc.stderr
    invalid = tmp_path / "invalid.jsonl"
    invalid.write_text('{"id":"f1","command":"true"}\n{"id":"f2","command":""}\n')
    proc = idle_daemon.run("enqueue", "--file", str(invalid))
    assert proc.returncode == 1 and "job 2 of the batch" in proc.stderr
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"id":"f1","command":"true"}\n{"id":"existing","command":"true"}\n')
    proc = idle_daemon.run("enqueue", "--file", str(duplicate))
    assert proc.returncode == 1 and "existing" in proc.stderr
    assert snapshot(idle_daemon) == before
    with idle_daemon.client() as c:
        assert c.list_jobs()[1] == 2


def test_no_daemon_is_exit_1_with_a_clear_message() -> None:
    d = QueueDaemon(short_tmpdir())  # never started
    try:
        proc = d.run("status")
        assert proc.returncode == 1
        assert "no queuectld is listening on" in proc.stderr
        assert str(d.socket) in proc.stderr
    finally:
        shutil.rmtree(d.home, ignore_errors=True)


# -- the raw socket ----------------------------------------------------------------


def raw(d: QueueDaemon, hello: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(d.socket))
    if hello:
        sock.sendall(pack(Hello().to_wire()))
        reply = read_frame(sock)
        assert reply is not None and reply["ok"] is True and reply["version"] == PROTOCOL_VERSION
    return sock


def read_frame(sock: socket.socket) -> dict[str, Any] | None:
    """One frame, or None when the daemon closed the connection."""
    header = recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    body = recv_exactly(sock, length)
    assert body is not None
    msg: dict[str, Any] = msgpack.unpackb(body, raw=False)
    return msg


def recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def assert_closed(sock: socket.socket) -> None:
    """The daemon hangs up: EOF (after at most an error frame), within the timeout."""
    while True:
        frame = read_frame(sock)
        if frame is None:
            break
        assert frame.get("ok") is False, frame
    sock.close()


def assert_serving(d: QueueDaemon, jobs_before: int) -> None:
    assert d.running()
    with d.client() as c:
        assert c.ping()["pong"] is True
        assert sum(c.status()["counts"].values()) == jobs_before


_BYTES_KEYS = msgpack.packb({b"rid": 1, b"op": b"ping"}, use_bin_type=True)

GARBAGE: list[tuple[str, bytes, bool]] = [
    # (name, bytes, sent after a valid hello?)
    ("http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("random-bytes", b"\xa5" + random.Random(2).randbytes(1023), False),  # length > limit
    ("undecodable-body", HEADER.pack(8) + b"\xc1" * 8, False),
    ("huge-declared-length", HEADER.pack(2**31), False),
    ("huge-length-after-hello", HEADER.pack(0xFFFFFFFF) + b"x" * 100, True),
    ("zero-length", HEADER.pack(0), True),
    ("msgpack-list-as-hello", HEADER.pack(4) + msgpack.packb([1, 2, 3]), False),
    ("msgpack-string-after-hello", HEADER.pack(6) + msgpack.packb("hello"), True),
    ("msgpack-int-after-hello", HEADER.pack(1) + msgpack.packb(7), True),
    ("bytes-keys-after-hello", HEADER.pack(len(_BYTES_KEYS)) + _BYTES_KEYS, True),
]


@pytest.mark.parametrize(
    ("data", "after_hello"),
    [pytest.param(data, after, id=name) for name, data, after in GARBAGE],
)
def test_garbage_closes_only_that_connection(
    idle_daemon: QueueDaemon, data: bytes, after_hello: bool
) -> None:
    jobs = sum(idle_daemon.counts().values())
    bystander = raw(idle_daemon)  # a well-behaved client connected all along
    sock = raw(idle_daemon, hello=after_hello)
    sock.sendall(data)
    assert_closed(sock)
    assert_serving(idle_daemon, jobs)
    bystander.sendall(pack({"rid": 1, "op": "ping", "args": {}}))
    assert (read_frame(bystander) or {}).get("ok") is True
    bystander.close()


def test_truncated_frame_then_hang_up(idle_daemon: QueueDaemon) -> None:
    jobs = sum(idle_daemon.counts().values())
    frame = pack({"rid": 1, "op": "enqueue", "args": {"command": "echo never"}})
    sock = raw(idle_daemon)
    sock.sendall(frame[: len(frame) // 2])
    sock.shutdown(socket.SHUT_WR)
    assert_closed(sock)
    assert_serving(idle_daemon, jobs)


def test_wrong_protocol_version_is_refused(idle_daemon: QueueDaemon) -> None:
    sock = raw(idle_daemon, hello=False)
    sock.sendall(pack(Hello(version=PROTOCOL_VERSION + 99).to_wire()))
    reply = read_frame(sock)
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == "protocol"
    assert "version" in reply["error"]["message"]
    assert_closed(sock)


def test_silent_and_half_open_clients_do_not_block_others(idle_daemon: QueueDaemon) -> None:
    jobs = sum(idle_daemon.counts().values())
    silent = [raw(idle_daemon, hello=False) for _ in range(5)]  # connect, say nothing
    stalled = raw(idle_daemon)
    stalled.sendall(HEADER.pack(100) + b"\x80")  # a frame that never completes
    assert_serving(idle_daemon, jobs)
    for sock in [*silent, stalled]:
        sock.close()


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        pytest.param({"op": "ping"}, "protocol", id="no-rid"),
        pytest.param({"rid": 5, "op": "drop_tables"}, "invalid_request", id="unknown-op"),
        pytest.param({"rid": 5, "op": "ping", "args": [1]}, "invalid_request", id="args-list"),
        pytest.param(
            {"rid": 5, "op": "enqueue", "args": {"command": 1}}, "invalid_request", id="bad-type"
        ),
        pytest.param(
            {"rid": 5, "op": "workers_set", "args": {"count": -3}},
            "invalid_request",
            id="negative-count",
        ),
    ],
)
def test_malformed_request_in_a_valid_frame_gets_an_error_reply(
    idle_daemon: QueueDaemon, msg: dict[str, Any], code: str
) -> None:
    jobs = sum(idle_daemon.counts().values())
    sock = raw(idle_daemon)
    sock.sendall(pack(msg))
    reply = read_frame(sock)
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    # The connection stays usable.
    sock.sendall(pack({"rid": 6, "op": "ping", "args": {}}))
    pong = read_frame(sock)
    assert pong is not None and pong["rid"] == 6 and pong["result"]["pong"] is True
    sock.close()
    assert_serving(idle_daemon, jobs)
    assert idle_daemon.status()["workers"]["desired"] == 0


def test_non_string_field_names_are_an_invalid_request(idle_daemon: QueueDaemon) -> None:
    sock = raw(idle_daemon)
    body = msgpack.packb(
        {"rid": 9, "op": "enqueue", "args": {b"command": "echo x", "id": "bk"}}, use_bin_type=True
    )
    sock.sendall(HEADER.pack(len(body)) + body)
    reply = read_frame(sock)
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request", reply
    sock.close()
    with idle_daemon.client() as c:
        assert [j["id"] for j in c.list_jobs()[0]] == ["existing", "second"]


def test_a_file_over_5000_jobs_is_still_one_transaction(
    idle_daemon: QueueDaemon, tmp_path: Path
) -> None:
    before = snapshot(idle_daemon)
    jobs = tmp_path / "many.jsonl"
    lines = [json.dumps({"command": "true"}) for _ in range(6000)]
    jobs.write_text("\n".join([*lines, '{"id":"existing","command":"true"}']) + "\n")
    proc = idle_daemon.run("enqueue", "--file", str(jobs))
    assert proc.returncode == 1 and "existing" in proc.stderr
    assert snapshot(idle_daemon) == before
