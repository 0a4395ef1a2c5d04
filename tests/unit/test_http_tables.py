"""The gateway's tables and settings, without processes (tests/http runs the real thing)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from queuectl.errors import ERRORS_BY_CODE
from queuectl.http import settings
from queuectl.http.guard import _identity
from queuectl.http.openapi import document
from queuectl.http.operations import OPERATIONS
from queuectl.http.problems import STATUS_BY_CODE

TOKEN = "0123456789abcdef0123"


def test_every_daemon_error_code_has_one_http_status() -> None:
    assert set(STATUS_BY_CODE) == set(ERRORS_BY_CODE)
    assert STATUS_BY_CODE["invalid_request"] == 400
    assert STATUS_BY_CODE["not_found"] == 404
    assert STATUS_BY_CODE["conflict"] == 409
    assert STATUS_BY_CODE["unavailable"] == STATUS_BY_CODE["shutting_down"] == 503
    assert 500 not in STATUS_BY_CODE.values()  # a daemon failure is the upstream's (502)


def test_operations_table_is_consistent_and_documented() -> None:
    keys = [(op.method, op.path) for op in OPERATIONS]
    assert len(keys) == len(set(keys))
    assert len({op.name for op in OPERATIONS}) == len(OPERATIONS)
    doc = document()
    for op in OPERATIONS:
        assert op.ok in op.statuses and 503 in op.statuses and 401 in op.statuses
        assert (403 in op.statuses) or not op.mutating
        assert (413 in op.statuses) == (op.body is not None)
        entry = doc["paths"][op.path][op.method.lower()]
        assert set(entry["responses"]) == {str(s) for s in op.statuses}
        for name in ("id", "key", "name"):
            if f"{{{name}}}" in op.path:
                assert any(p["name"] == name and p["in"] == "path" for p in entry["parameters"])
    seed = {("POST", "/enqueue"), ("POST", "/workers/start"), ("GET", "/status"), ("GET", "/dlq")}
    seed |= {("POST", "/dlq/retry/{id}"), ("GET", "/logs/{id}")}
    assert seed <= set(keys)
    assert "/metrics" in doc["paths"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert settings.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", ":8080", "h:0", "h:70000", "h:80x"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(settings.SettingsError, match="HOST:PORT"):
        settings.parse_listen(text)


def test_loopback_needs_no_token_anything_else_does() -> None:
    assert settings.load(env={}).loopback
    assert settings.load("localhost:1234", env={}).token is None
    assert settings.load("[::1]:8080", env={}).loopback
    with pytest.raises(settings.SettingsError, match="needs a token"):
        settings.load("0.0.0.0:8080", env={})
    with pytest.raises(settings.SettingsError, match="needs a token"):
        settings.load("myhost:8080", env={})
    ok = settings.load("0.0.0.0:8080", env={"QUEUECTL_HTTP_TOKEN": TOKEN})
    assert ok.token == TOKEN and not ok.loopback
    with pytest.raises(settings.SettingsError, match="at least 16"):
        settings.load(env={"QUEUECTL_HTTP_TOKEN": "short"})


def test_file_and_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    conf = tmp_path / "http.toml"
    conf.write_text(f'listen = "0.0.0.0:9000"\ntoken_file = "{token_file}"\n')
    loaded = settings.load(config=str(conf), env={})
    assert (loaded.host, loaded.port, loaded.token) == ("0.0.0.0", 9000, TOKEN)
    env = {"QUEUECTL_HTTP_LISTEN": "127.0.0.1:9001", "QUEUECTL_HTTP_TOKEN": "x" * 20}
    loaded = settings.load(config=str(conf), env=env)
    assert (loaded.port, loaded.token) == (9001, "x" * 20)
    assert settings.load("127.0.0.1:9002", str(conf), env=env).port == 9002
    conf.write_text('tokn = "typo"\n')
    with pytest.raises(settings.SettingsError, match="unknown key 'tokn'"):
        settings.load(config=str(conf), env={})


def test_credentials_are_checked_against_the_token() -> None:
    def who(auth: str | None) -> str | None:
        headers = Headers(headers={"authorization": auth} if auth else {})
        return _identity(headers, TOKEN)

    basic = base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    assert who(f"Bearer {TOKEN}") == "bearer"
    assert who(f"bearer {TOKEN}") == "bearer"
    assert who(f"Basic {basic}") == "basic:ops"
    assert who(None) is None
    assert who(f"Bearer {TOKEN}x") is None
    assert who("Basic !!!") is None
    assert who(f"Token {TOKEN}") is None
    assert _identity(Headers(headers={}), None) == "anonymous"
