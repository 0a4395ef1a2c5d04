"""Safety: a token off loopback (header only, constant-time), forged Origins refused,
bodies size-limited before parsing, mutating requests audited with who made them."""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess

import pytest

from tests.harness import QueueDaemon
from tests.http.conftest import GatewayFactory
from tests.http.gateway import Gateway

# Tokens, Origins and body limits of the gateway do not depend on the store: on SQLite
# only, to keep the suite in its time budget.
pytestmark = [
    pytest.mark.sqlite_only(reason="not about the store; suite time budget"),
    pytest.mark.timeout(120),
]

TEN_MB = 10 * 1024 * 1024


def test_non_loopback_bind_without_a_token_refuses_to_start(daemon: QueueDaemon) -> None:
    gw = Gateway(daemon, listen_host="0.0.0.0")
    result = subprocess.run(
        gw.command(), env=daemon.cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "needs a token" in result.stderr and "QUEUECTL_HTTP_TOKEN" in result.stderr


def test_token_is_required_and_only_from_the_header(
    daemon: QueueDaemon, gateway_factory: GatewayFactory
) -> None:
    token = secrets.token_hex(16)
    gw = gateway_factory(daemon, listen_host="0.0.0.0", env={"QUEUECTL_HTTP_TOKEN": token})
    for path in ("/status", "/", "/metrics", "/events", "/static/dashboard.js", "/docs"):
        answer = gw.request("GET", path)
        assert answer.status == 401, path
        assert "Bearer" in answer.headers["www-authenticate"]
    assert gw.request("GET", f"/status?token={token}").status == 401
    assert gw.request("GET", f"/status?access_token={token}").status == 401
    wrong = gw.request("GET", "/status", headers={"Authorization": f"Bearer {token[:-1]}x"})
    assert wrong.status == 401
    good = gw.request("GET", "/status", headers={"Authorization": f"Bearer {token}"})
    assert good.status == 200 and "pending" in good.json
    # A browser's login prompt: HTTP Basic with the token as the password.
    basic = base64.b64encode(f"alice:{token}".encode()).decode()
    answer = gw.request(
        "POST",
        "/jobs",
        {"id": "b", "command": "true"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert answer.status == 201
    (audit,) = [a for a in gw.audit() if a["path"] == "/jobs"]
    assert audit["who"] == "basic:alice" and audit["status"] == 201 and audit["method"] == "POST"
    assert audit["peer"].startswith("127.0.0.1:")
    assert token not in gw.stderr()


def test_forged_origin_is_refused_for_changes(gateway: Gateway) -> None:
    evil = {"Origin": "http://evil.example"}
    answer = gateway.request("POST", "/enqueue", {"command": "touch /tmp/pwned"}, headers=evil)
    assert answer.status == 403 and answer.json["code"] == "forbidden_origin"
    assert gateway.json("GET", "/jobs")["total"] == 0
    # Reading is not a change; the gateway's own pages are its own origin.
    assert gateway.request("GET", "/status", headers=evil).status == 200
    own = {"Origin": gateway.url}
    assert gateway.request("POST", "/jobs", {"command": "true"}, headers=own).status == 201
    assert [a["status"] for a in gateway.audit()] == [403, 201]


def test_a_10_mb_body_is_refused_before_parsing_and_the_gateway_stays_up(
    gateway: Gateway,
) -> None:
    # Declared length: refused from the headers alone, the body never read.
    with socket.create_connection((gateway.host, gateway.port), timeout=30) as s:
        s.sendall(
            b"POST /enqueue HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {TEN_MB}\r\n\r\n".encode()
            + b'{"command": "'
        )
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "application/problem+json" in head
    # Chunked: counted as it arrives, refused once over the limit.
    with socket.create_connection((gateway.host, gateway.port), timeout=30) as s:
        s.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        try:
            for _ in range(TEN_MB // len(chunk)):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while sending: what we want
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert gateway.running()
    assert gateway.json("GET", "/status")["pending"] == 0
    # Just under the limit still works (a long but valid batch).
    jobs = [{"command": "true"} for _ in range(5000)]
    assert gateway.json("POST", "/jobs/batch", {"jobs": jobs}, status=201)["count"] == 5000
