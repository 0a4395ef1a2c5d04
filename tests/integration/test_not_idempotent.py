"""A job marked not idempotent is never run again after an interruption (issue 4, item 3)."""

from __future__ import annotations

from pathlib import Path

from tests.harness import QueueDaemon, wait_for


def test_not_idempotent_job_goes_dead_when_its_run_is_cut_short(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    command = f"echo run >> {marker}; sleep 30"
    daemon.cli("enqueue", "--id", "once", "--not-idempotent", "--", command)
    daemon.cli("enqueue", "--id", "again", "--", f"echo run >> {tmp_path / 'again'}; sleep 30")
    daemon.cli("worker", "start", "--count", "2")
    wait_for(lambda: marker.exists() and (tmp_path / "again").exists(), timeout=20)
    daemon.kill9()
    daemon.start()
    once = daemon.wait_for_state("once", "dead")
    assert "not idempotent" in (once["last_error"] or "")
    assert once["idempotent"] is False
    assert [a["outcome"] for a in once["history"]] == ["interrupted"]
    # The idempotent one is simply run again.
    wait_for(lambda: (tmp_path / "again").read_text().count("run") == 2, timeout=20)
    assert marker.read_text().count("run") == 1
    assert daemon.job("again")["state"] == "processing"


def test_not_idempotent_flag_and_json_field_agree(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "a", "--not-idempotent", "--", "true")
    daemon.cli("enqueue", '{"id": "b", "command": "true", "idempotent": false}')
    daemon.cli("enqueue", "--id", "c", "--", "true")
    assert daemon.job("a")["idempotent"] is False
    assert daemon.job("b")["idempotent"] is False
    assert daemon.job("c")["idempotent"] is True
    refused = daemon.run("enqueue", '{"id": "d", "command": "true", "idempotent": "no"}')
    assert refused.returncode == 1
    assert "idempotent" in refused.stderr
