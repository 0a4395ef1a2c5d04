"""The click-free ``queuectl enqueue`` path: what it parses, and that it stays lean."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import queuectl
from queuectl import client, fastcli, paths, protocol, wire

# Modules the fast path must not load: each costs milliseconds of every `queuectl enqueue`.
HEAVY = ("re", "typing", "socket", "click", "dataclasses", "pathlib", "queuectl.protocol")


def test_protocol_reexports_the_wire_format() -> None:
    assert protocol.pack is wire.pack and protocol.FrameBuffer is wire.FrameBuffer
    assert protocol.HEADER is wire.HEADER and protocol.unpack is wire.unpack
    assert protocol.PROTOCOL_VERSION == wire.PROTOCOL_VERSION
    assert protocol.MAX_FRAME_BYTES == wire.MAX_FRAME_BYTES
    assert protocol.Hello().to_wire() == wire.hello()
    assert client.resolve_socket is paths.resolve_socket
    assert client.SYSTEM_SOCKET == paths.SYSTEM_SOCKET


def test_fast_path_imports_no_heavy_module() -> None:
    # -S: no site, so an editable install's import hook (which loads re, pathlib) stays out.
    roots = [str(Path(queuectl.__file__).parents[1]), str(Path(msgpack.__file__).parents[1])]
    # queuectl.render too: the fast `status` renders with it.
    probe = "import sys, queuectl.fastcli, queuectl.render; m = sorted(sys.modules); print(*m)"
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(roots)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    loaded = set(out.split())
    assert not loaded & set(HEAVY), f"queuectl.fastcli loads {sorted(loaded & set(HEAVY))}"


@given(st.text(max_size=20))
def test_quote_agrees_with_shlex(word: str) -> None:
    assert fastcli._quote(word) == shlex.quote(word)


@pytest.mark.parametrize(
    ("args", "spec", "as_json"),
    [
        (['{"id":"job1","command":"echo hi"}'], {"id": "job1", "command": "echo hi"}, False),
        (["--", "sleep", "2"], {"command": "sleep 2"}, False),
        (["echo hi"], {"command": "echo hi"}, False),
        (
            ["--id", "j2", "--timeout", "30", "--max-retries", "5", "--", "sleep", "2"],
            {"command": "sleep 2", "id": "j2", "max_retries": 5, "timeout": 30.0},
            False,
        ),
        (["--delay", "0", "--not-idempotent", "--json", "--", "a b"], None, True),
    ],
)
def test_parsed_forms(args: list[str], spec: dict[str, object] | None, as_json: bool) -> None:
    got, got_json = fastcli.parse_enqueue(args)
    if spec is not None:
        assert got == spec
    else:
        assert got == {"command": "a b", "delay": 0.0, "idempotent": False}
    assert got_json is as_json


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["--file", "jobs.jsonl"],
        ["--timeout", "0", "--", "true"],
        ["--timeout", "1e3", "--", "true"],
        ["--max-retries", "1001", "--", "true"],
        ["--id=x", "--", "true"],
        ["--id", "-x", "--", "true"],
        ["--id", "x", '{"command": "true"}'],
        ['{"command": '],
        ["-n", "true"],
        ["--"],
        ['{"id":"a","command":"true"}', '{"id":"b","command":"true"}'],
        ["--max-retries", "1_0", "--", "true"],
        ["--timeout", "1_0", "--", "true"],
        ["--timeout", " 1", "--", "true"],
    ],
)
def test_everything_else_goes_to_click(args: list[str]) -> None:
    with pytest.raises(fastcli._Fallback):
        fastcli.parse_enqueue(args)
