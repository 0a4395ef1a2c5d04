"""The shipped Prometheus files: rules and scrape config checked by promtool (taken
from Debian's prometheus package by ``make test-deps``), the alerts unit-tested, and
every metric the rules and the Grafana dashboard use exported by a live gateway."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import QueueDaemon, wait_for
from tests.http.gateway import Gateway

# The shipped Prometheus rules and exported metric names do not depend on the store: on
# SQLite only, to keep the suite in its time budget.
pytestmark = [
    pytest.mark.sqlite_only(reason="not about the store; suite time budget"),
    pytest.mark.timeout(120),
]

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"
METRIC = re.compile(r"\bqueuectl_[a-z_]+")


def promtool() -> str:
    tool = Path(sys.executable).with_name("promtool")
    if not tool.exists():
        pytest.fail(
            f"{tool} is missing: `make test-deps` takes it out of Debian's prometheus "
            "package; run it, then rerun"
        )
    return str(tool)


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], cwd=SHIPPED, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_and_scrape_config_pass_promtool() -> None:
    assert "SUCCESS: 4 rules found" in run_promtool("check", "rules", "queuectl-rules.yml")
    assert "SUCCESS" in run_promtool("check", "config", "prometheus.yml")


def test_alerts_fire_when_they_should() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "queuectl-rules.test.yml")


def test_rules_and_dashboard_use_only_exported_metrics(
    daemon: QueueDaemon, gateway: Gateway
) -> None:
    daemon.cli("enqueue", "--id", "a", "--", "true")
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("a", "completed")

    def scrape() -> str:
        answer = gateway.request("GET", "/metrics", headers={"Accept": "text/plain"})
        assert answer.status == 200
        return answer.body.decode()

    def counted() -> str | None:
        text = scrape()
        return text if "queuectl_jobs_completed_total 1.0" in text else None

    text = wait_for(counted, what="the event counters")
    daemon.cli("worker", "stop")
    daemon.cli("enqueue", "--id", "b", "--", "true")
    text += scrape()  # with a pending job: the oldest-pending gauge is present
    exported = {m.group(0) for m in METRIC.finditer(text)}
    dashboard = json.loads((SHIPPED / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m.group(0) for m in METRIC.finditer((SHIPPED / "queuectl-rules.yml").read_text())}
    used |= {m.group(0) for e in exprs for m in METRIC.finditer(e)}
    assert used and used <= exported, sorted(used - exported)
