"""Output for people: the seed's event lines and tables; JSON for programs."""

from __future__ import annotations

import json
import time
from typing import Any, cast

from queuectl import render
from queuectl.protocol import AttemptView, JobView, StatusView

T0 = 1_700_000_000.0


def job(**over: Any) -> JobView:
    view: dict[str, Any] = {
        "id": "job1",
        "command": "echo Hello QueueCTL",
        "cwd": "/tmp",
        "state": "completed",
        "attempts": 1,
        "interruptions": 0,
        "max_retries": 3,
        "timeout": 10.0,
        "created_at": T0,
        "updated_at": T0 + 1,
        "run_at": T0,
        "last_exit_code": 0,
        "last_error": None,
        "history": [],
    }
    view.update(over)
    return cast(JobView, view)


def test_started_and_completed_lines_match_the_seed() -> None:
    started = {"type": "started", "id": "job1", "command": "echo Hello QueueCTL", "attempt": 1}
    line = render.event_line(started)
    assert line is not None
    assert line.startswith("[INFO] [job1] processing -> `echo Hello QueueCTL`")
    assert "attempt 1" in line
    assert render.event_line({"type": "completed", "id": "job1"}) == "[INFO] [job1] completed ✔"


def test_failed_line_shows_the_retry_and_its_delay() -> None:
    event = {
        "type": "failed",
        "id": "j",
        "time": T0,
        "retry_at": T0 + 4.2,
        "retry": 2,
        "max_retries": 3,
        "error": "exit code 1",
    }
    assert render.event_line(event) == "[WARN] [j] failed (exit code 1); retry 2/3 in 4s"
    late = {**event, "retry_at": T0 - 5}  # a retry already due never shows a negative wait
    assert render.event_line(late) == "[WARN] [j] failed (exit code 1); retry 2/3 in 0s"


def test_dead_pending_enqueued_and_idle_lines() -> None:
    dead = {"type": "dead", "id": "job_fail", "error": "command not found (exit code 127)"}
    assert render.event_line(dead) == (
        "[WARN] [job_fail] moved to DLQ (command not found (exit code 127))"
    )
    pending = {"type": "pending", "id": "j", "error": "worker w1 exited with code -9"}
    line = render.event_line(pending)
    assert line is not None and line.startswith("[WARN] [j] interrupted (worker w1")
    assert render.event_line({"type": "enqueued", "id": "j"}) == "[INFO] [j] enqueued"
    idle = render.event_line({"type": "idle", "time": T0})
    assert idle is not None and idle.startswith("[INFO] queue drained")
    later = {"type": "idle", "time": T0, "scheduled": 2, "next_at": T0 + 90}
    first = time.strftime("%H:%M:%S", time.localtime(T0 + 90))
    assert render.event_line(later) == (
        f"[INFO] nothing to run now: 2 jobs wait for a later time, the first at {first}"
    )
    far = render.event_line({**later, "scheduled": 1, "next_at": T0 + 3 * 86400})
    assert far is not None and "1 job waits" in far
    assert time.strftime("%Y-%m-%d", time.localtime(T0 + 3 * 86400)) in far


def test_unknown_events_print_nothing() -> None:
    assert render.event_line({"type": "something_new", "id": "j"}) is None
    assert render.event_line({}) is None


def test_table_aligns_columns() -> None:
    out = render.table(("state", "count"), [("pending", 3), ("dead", None)])
    lines = out.splitlines()
    assert lines[0] == "state   | count"
    assert lines[1] == "--------+------"
    assert lines[2] == "pending | 3"
    assert lines[3] == "dead    |"


def test_status_lists_every_state_and_the_workers() -> None:
    view = StatusView(
        counts={"pending": 2, "completed": 5},
        workers={"desired": 2, "running": 1, "busy": 1},
        draining=False,
        version="0.1.0",
    )
    out = render.status(view)
    rows: dict[str, str] = {}
    for line in out.splitlines()[2:7]:  # the seed's five state rows
        state, count = line.split("|")
        rows[state.strip()] = count.strip()
    assert rows == {"pending": "2", "processing": "0", "completed": "5", "failed": "0", "dead": "0"}
    assert "workers: 1 running / 2 desired, 1 busy" in out
    assert "draining" not in out
    assert "draining" in render.status({**view, "draining": True})


def test_jobs_table_and_paging_note() -> None:
    out = render.jobs([job(), job(id="job2", state="dead", attempts=4, last_exit_code=127)], 5)
    assert "job1" in out and "completed" in out and "1/4" in out
    assert "job2" in out and "dead" in out and "4/4" in out and "127" in out
    assert "(2 of 5 shown" in out
    assert "shown" not in render.jobs([job()], 1)
    long = render.jobs([job(command="x" * 200)], 1)
    assert "…" in long and "x" * 60 not in long


def test_job_detail_shows_the_history() -> None:
    history = [
        AttemptView(
            attempt=1,
            started_at=T0,
            finished_at=T0 + 0.5,
            exit_code=1,
            outcome="failed",
            error="exit code 1",
            worker="w1",
        ),
        AttemptView(
            attempt=2,
            started_at=T0 + 3,
            finished_at=None,
            exit_code=None,
            outcome=None,
            error=None,
            worker="w2",
        ),
    ]
    out = render.job_detail(job(state="processing", history=history, last_error="exit code 1"))
    assert "id:          job1" in out
    assert "attempts:    1 of 4 allowed; 2 runs recorded, 0 interrupted" in out
    assert "last error:  exit code 1" in out
    assert "0.500s" in out
    assert "running" in out  # the attempt still under way


def test_to_json_handles_bytes() -> None:
    assert json.loads(render.to_json({"data": b"hi\xff", "n": 1})) == {"data": "hi\ufffd", "n": 1}


def test_status_shows_waiting_and_cancelled_when_they_hold_jobs() -> None:
    view = StatusView(
        counts={"pending": 1, "waiting": 3, "cancelled": 0},
        queues={"default": {"pending": 1}, "mail": {"waiting": 3}},
        workers={"desired": 0, "running": 0, "busy": 0},
        draining=False,
        version="0.1.0",
    )
    out = render.status(view)
    assert "waiting    | 3" in out and "cancelled" not in out
    assert "mail    | 0       | 3" in out  # the per-queue lines, as there are two queues


def test_show_gives_cpu_and_peak_columns_when_wide_and_a_line_in_80() -> None:
    now = time.time()  # today: the times print without their date
    attempt = {
        "attempt": 1,
        "started_at": now,
        "finished_at": now + 1,
        "exit_code": 0,
        "outcome": "completed",
        "error": None,
        "worker": "x1",
        "cpu_seconds": 0.25,
        "peak_bytes": 19 << 20,
    }
    job = {
        "id": "j",
        "command": "true",
        "cwd": "/",
        "state": "completed",
        "attempts": 1,
        "interruptions": 0,
        "max_retries": 3,
        "timeout": 10.0,
        "created_at": now,
        "updated_at": now,
        "run_at": now,
        "last_error": None,
        "memory": 512 << 20,
        "cpus": 1.5,
        "max_procs": None,
        "history": [attempt],
    }
    narrow = render.job_detail(job, 80)  # type: ignore[arg-type]
    assert "limits:      memory 512M, cpus 1.5" in narrow
    assert "attempt 1 used: cpu 0.250s, peak memory 19.0M" in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    wide = render.job_detail(job, None)  # type: ignore[arg-type]
    assert "| cpu    | peak  |" in wide and "| 0.250s | 19.0M |" in wide
