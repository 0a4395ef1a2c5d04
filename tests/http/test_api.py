"""The resource layout, error mapping, metrics negotiation and the event stream."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from queuectl.http.operations import OPERATIONS
from tests.harness import QueueDaemon, wait_for
from tests.http.conftest import GatewayFactory
from tests.http.gateway import Gateway

pytestmark = pytest.mark.timeout(120)

PROBLEM = "application/problem+json"


def test_jobs_resources(daemon: QueueDaemon, gateway: Gateway) -> None:
    job = gateway.json("POST", "/jobs", {"id": "a", "command": "echo one"}, status=201)
    assert job["id"] == "a" and job["state"] == "pending"
    batch = gateway.json(
        "POST", "/jobs/batch", {"jobs": [{"command": "true"}, {"id": "c", "command": "false"}]}, 201
    )
    assert batch["count"] == 2 and batch["ids"][1] == "c"
    page = gateway.json("GET", "/jobs?state=pending&limit=2")
    assert page["total"] == 3 and [j["id"] for j in page["jobs"]] == ["a", batch["ids"][0]]
    assert gateway.json("GET", "/workers") == {"desired": 0, "running": 0, "busy": 0}
    assert gateway.json("PUT", "/workers", {"count": 1})["desired"] == 1
    daemon.wait_for_state("a", "completed")
    assert gateway.json("GET", "/jobs/a")["history"][0]["exit_code"] == 0
    attempts = gateway.json("GET", "/jobs/a/attempts")
    assert [a["outcome"] for a in attempts] == ["completed"]
    assert "one\n" in gateway.json("GET", "/jobs/a/log")["log"]
    gateway.json("PUT", "/config/max-retries", {"value": 0})
    assert gateway.json("GET", "/config/max-retries")["value"] == 0
    assert {s["key"] for s in gateway.json("GET", "/config")} >= {"max-retries", "backoff-base"}
    assert gateway.json("GET", "/health")["pong"] is True


def test_dead_job_retried_through_its_resource(daemon: QueueDaemon, gateway: Gateway) -> None:
    gateway.json("POST", "/jobs", {"id": "d", "command": "exit 3", "max_retries": 0}, 201)
    gateway.json("PUT", "/workers", {"count": 1})
    daemon.wait_for_state("d", "dead")
    assert gateway.json("POST", "/jobs/d/retry")["state"] in ("pending", "processing")
    # A job that is not dead: the daemon's conflict, as a 409.
    daemon.wait_for_state("d", "dead")
    gateway.json("POST", "/jobs", {"id": "e", "command": "true"}, 201)
    daemon.wait_for_state("e", "completed")
    answer = gateway.request("POST", "/jobs/e/cancel")  # it has run: too late to cancel
    assert answer.status == 409 and answer.json["code"] == "conflict"


def test_job_control_and_queues(daemon: QueueDaemon, gateway: Gateway) -> None:
    gateway.json("POST", "/jobs", {"id": "q1", "command": "true", "queue": "mail"}, 201)
    gateway.json("POST", "/jobs", {"id": "q2", "command": "true", "priority": 5}, 201)
    assert gateway.json("POST", "/jobs/q1/cancel")["state"] == "cancelled"
    assert gateway.json("GET", "/jobs?queue=mail")["jobs"][0]["state"] == "cancelled"
    assert gateway.json("GET", "/jobs?sort=priority&state=pending")["jobs"][0]["id"] == "q2"
    mail = gateway.json("GET", "/queues/mail")
    assert mail["counts"]["cancelled"] == 1 and mail["paused"] is False
    assert gateway.json("POST", "/queues/mail/pause")["paused"] is True
    assert gateway.json("PUT", "/queues/mail", {"concurrency": 2, "rate": "10/s"})["rate"] == "10/s"
    assert gateway.json("POST", "/queues/mail/resume")["paused"] is False
    assert {q["name"] for q in gateway.json("GET", "/queues")} >= {"mail", "default"}
    assert gateway.request("GET", "/queues/nowhere").status == 404
    (node,) = gateway.json("GET", "/nodes")  # one daemon: the one behind the gateway
    assert node["state"] == "live" and node["this"] is True and node["pid"] == daemon.pid
    gateway.json("POST", "/jobs", {"id": "long", "command": "sleep 60"}, 201)
    gateway.json("PUT", "/workers", {"count": 1})
    daemon.wait_for_state("long", "processing")
    assert gateway.json("POST", "/jobs/long/kill", {"signal": "TERM"}) == {"killing": ["long"]}
    daemon.wait_for_state("long", "cancelled")


REFUSALS = [
    ("POST", "/jobs", {"command": "true", "bogus": 1}, 400, "invalid_request"),
    ("POST", "/jobs", {"command": ""}, 400, "invalid_request"),
    ("POST", "/jobs", [1, 2], 400, "invalid_request"),
    ("POST", "/jobs", {"command": "true", "max_retries": 2**70}, 400, "invalid_request"),
    ("POST", "/enqueue", {"id": "../etc", "command": "true"}, 400, "invalid_request"),
    ("PUT", "/workers", {"count": -1}, 400, "invalid_request"),
    ("PUT", "/workers", {"count": True}, 400, "invalid_request"),
    ("PUT", "/config/nope", {"value": "1"}, 400, "invalid_request"),
    ("GET", "/jobs?limit=ten", None, 400, "invalid_request"),
    ("GET", "/jobs?state=lost", None, 400, "invalid_request"),
    ("GET", "/jobs/ghost", None, 404, "not_found"),
    ("GET", "/logs/ghost", None, 404, "not_found"),
    ("POST", "/dlq/retry/ghost", None, 404, "not_found"),
    ("GET", "/no/such/thing", None, 404, "not_found"),
    ("DELETE", "/jobs", None, 405, "method_not_allowed"),
]


def test_refusals_are_problems_with_the_daemons_code(gateway: Gateway) -> None:
    for method, path, body, status, code in REFUSALS:
        answer = gateway.request(method, path, body)
        assert answer.status == status, (method, path, answer.body)
        assert answer.content_type == PROBLEM
        problem = answer.json
        assert problem["status"] == status and problem["code"] == code, (path, problem)
        assert problem["detail"] and "Traceback" not in problem["detail"]


def test_invalid_json_and_duplicate_id(gateway: Gateway) -> None:
    answer = gateway.request("POST", "/enqueue", raw=b'{"id": "x", "command": ', headers={})
    assert answer.status == 400 and "not valid JSON" in answer.json["detail"]
    answer = gateway.request("POST", "/enqueue", raw=b'{"command": "true", "timeout": NaN}')
    assert answer.status == 400
    gateway.json("POST", "/enqueue", {"id": "dup", "command": "true"}, status=201)
    answer = gateway.request("POST", "/enqueue", {"id": "dup", "command": "true"})
    assert answer.status == 409 and answer.json["code"] == "conflict"


def test_daemon_unreachable_is_503_with_the_reason(daemon: QueueDaemon, gateway: Gateway) -> None:
    assert gateway.request("GET", "/status").status == 200
    daemon.stop()
    answer = gateway.request("GET", "/status")
    assert answer.status == 503 and answer.content_type == PROBLEM
    assert answer.json["code"] == "unavailable" and "queuectld" in answer.json["detail"]
    metrics = gateway.request("GET", "/metrics", headers={"Accept": "text/plain"})
    assert metrics.status == 200 and "queuectl_up 0.0" in metrics.body.decode()
    daemon.start()  # the gateway reconnects by itself
    assert gateway.request("GET", "/status").status == 200


def test_metrics_negotiated(daemon: QueueDaemon, gateway: Gateway) -> None:
    gateway.json("POST", "/jobs", {"id": "m", "command": "true"}, 201)
    gateway.json("PUT", "/workers", {"count": 1})
    daemon.wait_for_state("m", "completed")

    def scrape(accept: str) -> tuple[str, str]:
        answer = gateway.request("GET", "/metrics", headers={"Accept": accept})
        assert answer.status == 200
        return answer.content_type, answer.body.decode()

    # What Prometheus sends: OpenMetrics preferred.
    kind, text = scrape(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    assert kind.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    kind, text = scrape("text/plain;version=0.0.4")
    assert kind.startswith("text/plain")
    assert 'queuectl_jobs{queue="default",state="completed"} 1.0' in text
    assert "queuectl_up 1.0" in text and "queuectl_workers_desired 1.0" in text
    assert "queuectl_daemon_start_time_seconds" in text
    # Counted from the event feed: it may trail the daemon by an event or two.
    wait_for(
        lambda: "queuectl_jobs_completed_total 1.0" in scrape("text/plain")[1],
        what="the completed counter",
    )
    text = scrape("text/plain")[1]
    assert "queuectl_attempt_duration_seconds_count 1.0" in text
    assert "queuectl_queue_wait_seconds_count 1.0" in text
    kind, _ = scrape("*/*")
    assert kind == "application/json"


def test_event_stream_follows_the_daemon(daemon: QueueDaemon, gateway: Gateway) -> None:
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=30)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")

    def next_event() -> dict[str, object]:
        while True:
            line = resp.readline().decode()
            if line.startswith("data: "):
                return dict(json.loads(line[6:]))

    assert next_event() == {"type": "upstream", "connected": True}
    daemon.cli("enqueue", "--id", "seen", "--", "true")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        event = next_event()
        if event.get("type") == "enqueued":
            assert event["id"] == "seen"
            break
    else:
        raise AssertionError("no enqueued event")
    conn.close()


def test_openapi_document_and_docs_page(gateway: Gateway) -> None:
    doc = gateway.json("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    for op in OPERATIONS:
        entry = doc["paths"][op.path][op.method.lower()]
        assert entry["operationId"] == op.name
        assert set(entry["responses"]) == {str(s) for s in op.statuses}
    page = gateway.request("GET", "/docs")
    assert page.status == 200 and b"/dlq/retry/{id}" in page.body
    assert b"http://" not in page.body and b"https://" not in page.body  # nothing from a CDN


def test_gateway_stops_promptly_with_an_open_event_stream(
    daemon: QueueDaemon, gateway_factory: GatewayFactory
) -> None:
    gw = gateway_factory(daemon)
    conn = http.client.HTTPConnection(gw.host, gw.port, timeout=30)
    conn.request("GET", "/events")
    assert conn.getresponse().status == 200
    started = time.monotonic()
    # uvicorn ends by re-raising the SIGTERM it handled (systemd counts that a clean stop).
    assert gw.stop() in (0, -15)
    assert time.monotonic() - started < 10
    conn.close()
