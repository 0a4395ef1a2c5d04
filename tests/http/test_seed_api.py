"""The seed README's API sections 2.2 and 5.5, with curl exactly as the seed writes it.

A real daemon, a real ``queuectl http``, the real curl; only the port differs (each
test gets a free one). Retries are short (``backoff-base 1``) so job3 reaches the DLQ
in seconds.
"""

from __future__ import annotations

import json

import pytest

from tests.harness import QueueDaemon, wait_for
from tests.http.gateway import Gateway

pytestmark = pytest.mark.timeout(120)

STATES = ("pending", "processing", "completed", "failed", "dead")


def test_api_demo_flow_section_2_2(daemon: QueueDaemon, gateway: Gateway) -> None:
    daemon.cli("config", "set", "max-retries", "1")
    daemon.cli("config", "set", "backoff-base", "1")
    # The section 2.1 job that the API flow's step 5 retries.
    daemon.cli("enqueue", '{"id":"job3","command":"not_a_real_command"}')

    # Step 1 - Enqueue Jobs via API
    out = gateway.curl(
        "-X", "POST", "http://127.0.0.1:8080/enqueue",
        "-H", "Content-Type: application/json",
        "-d", '{"id":"job1","command":"echo Job 1 via API"}',
    )  # fmt: skip
    answer = json.loads(out)
    assert answer["status"] == "success" and answer["job_id"] == "job1"
    assert answer["job"]["state"] == "pending"

    # Step 2 - Start Workers via API
    out = gateway.curl(
        "-X", "POST", "http://127.0.0.1:8080/workers/start",
        "-H", "Content-Type: application/json",
        "-d", '{"count":2}',
    )  # fmt: skip
    assert json.loads(out)["status"] == "started" and json.loads(out)["workers"] == 2
    daemon.wait_for_state("job1", "completed")
    daemon.wait_for_state("job3", "dead")

    # Step 3 - Check Status
    status = json.loads(gateway.curl("http://127.0.0.1:8080/status"))
    assert {k: status[k] for k in STATES} == {
        "pending": 0, "processing": 0, "completed": 1, "failed": 0, "dead": 1,
    }  # fmt: skip
    assert status["stop_flag"] == 0 and status["workers"]["desired"] == 2

    # Step 4 - View DLQ
    dlq = json.loads(gateway.curl("http://127.0.0.1:8080/dlq"))
    assert [j["id"] for j in dlq] == ["job3"] and dlq[0]["last_exit_code"] == 127

    # Step 5 - Retry DLQ Job
    out = json.loads(gateway.curl("-X", "POST", "http://127.0.0.1:8080/dlq/retry/job3"))
    assert out["status"] == "success" and out["message"] == "DLQ job job3 retried"
    assert out["job"]["state"] == "pending" and out["job"]["attempts"] == 0
    daemon.wait_for_state("job3", "dead")  # it fails again, as the seed's does

    # Step 6 - Fetch Job Logs
    log = json.loads(gateway.curl("http://127.0.0.1:8080/logs/job1"))
    assert log["job_id"] == "job1"
    assert "Command: echo Job 1 via API" in log["log"] and "Job 1 via API\n" in log["log"]

    # Step 7 - View Metrics (curl sends Accept: */*: the seed's JSON)
    metrics = json.loads(gateway.curl("http://127.0.0.1:8080/metrics"))
    assert metrics["total_jobs"] == 2 and metrics["completed_jobs"] == 1
    assert metrics["failed_jobs"] == 1 and metrics["success_rate"] == "50.0%"
    assert metrics["active_workers"] == 2


def test_endpoint_test_section_5_5(daemon: QueueDaemon, gateway: Gateway) -> None:
    daemon.cli("enqueue", '{"id":"job1","command":"echo Hello QueueCTL"}')
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("job1", "completed")

    status = json.loads(gateway.curl("http://127.0.0.1:8080/status"))
    assert status["completed"] == 1
    metrics = json.loads(gateway.curl("http://127.0.0.1:8080/metrics"))
    assert metrics["completed_jobs"] == 1 and metrics["success_rate"] == "100.0%"
    assert json.loads(gateway.curl("http://127.0.0.1:8080/dlq")) == []
    log = json.loads(gateway.curl("http://127.0.0.1:8080/logs/job1"))
    assert "Hello QueueCTL" in log["log"]


def test_seed_section_1_7_start_and_stop_workers(daemon: QueueDaemon, gateway: Gateway) -> None:
    out = json.loads(gateway.curl("-X", "POST", "http://127.0.0.1:8080/workers/start"))
    assert out["workers"] == 1  # the seed's default count
    wait_for(lambda: daemon.status()["workers"]["running"] == 1, what="one worker running")
    out = json.loads(gateway.curl("-X", "POST", "http://127.0.0.1:8080/workers/stop"))
    assert out["status"] == "stopping" and out["desired"] == 0
    assert json.loads(gateway.curl("http://127.0.0.1:8080/status"))["stop_flag"] == 1
