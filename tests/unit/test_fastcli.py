"""The click-free ``queuectl enqueue`` path agrees with queuectl.protocol, client and cli."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuectl import client, fastcli, protocol


def test_protocol_facts_agree() -> None:
    assert fastcli.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert fastcli.HEADER.format == protocol.HEADER.format
    assert fastcli.MAX_FRAME_BYTES == protocol.MAX_FRAME_BYTES
    assert fastcli.SYSTEM_SOCKET == client.SYSTEM_SOCKET
    hello = protocol.Hello().to_wire()
    assert hello == {"hello": "queuectl", "version": fastcli.PROTOCOL_VERSION}
    assert protocol.Op.ENQUEUE.value == "enqueue"


@pytest.mark.parametrize("env", [{}, {"QUEUECTL_SOCKET": "/x/s.sock"}, {"QUEUECTL_HOME": "/h"}])
def test_socket_lookup_agrees(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QUEUECTL_SOCKET", raising=False)
    monkeypatch.delenv("QUEUECTL_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert fastcli._socket_path() == client.resolve_socket(None)[0]


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
    ],
)
def test_everything_else_goes_to_click(args: list[str]) -> None:
    with pytest.raises(fastcli._Fallback):
        fastcli.parse_enqueue(args)
