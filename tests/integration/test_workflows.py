"""Workflows through the real CLI and a real daemon (issue 10): dependencies, cron
schedules, purge and retention.

Order is checked by the jobs' own stamps; schedules are followed through the daemon's
event stream (``watch``), never by sleeping for a tick.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl.client import Client
from tests.harness import QueueDaemon, wait_for
from tests.integration.test_job_control import stamp_cmd, stamps

pytestmark = pytest.mark.timeout(180)


# -- dependencies -----------------------------------------------------------------------


def test_a_three_step_chain_runs_in_order(daemon: QueueDaemon, tmp_path: Path) -> None:
    out = tmp_path / "chain"
    daemon.cli("enqueue", "--id", "fetch", "--", f"sleep 0.3; {stamp_cmd(out, 'fetch')}")
    blocked = json.loads(
        daemon.cli(
            "enqueue", "--json", "--id", "transform", "--after", "fetch", "--", stamp_cmd(out, "t")
        )
    )
    assert blocked["state"] == "blocked"
    assert blocked["parents"][0]["id"] == "fetch"
    daemon.cli("enqueue", "--id", "load", "--after", "transform", "--", stamp_cmd(out, "load"))
    waits = daemon.cli("list", "--blocked")
    assert "fetch (pending)" in waits and "transform (blocked)" in waits
    # Three free workers: without the dependencies all three would start at once.
    daemon.cli("worker", "start", "--count", "3")
    daemon.wait_for_state("load", "completed")
    assert [name for name, _ in stamps(out)] == ["fetch", "t", "load"]
    show = daemon.cli("show", "transform")
    assert "after:       fetch (completed, exit 0)" in show
    assert "before:      load" in show


def test_a_dead_parent_cancels_its_dependents_transitively(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "p", "--max-retries", "0", "--", "exit 4")
    daemon.cli("enqueue", "--id", "c1", "--after", "p", "--", "true")
    daemon.cli("enqueue", "--id", "c2", "--after", "c1", "--", "true")
    daemon.cli("worker", "start", "--count", "2")
    events = daemon.watch_until_idle()
    cancelled = {e["id"]: e["reason"] for e in events if e["type"] == "cancelled"}
    assert cancelled == {
        "c1": "parent job 'p' ended dead",
        "c2": "parent job 'c1' ended cancelled",
    }
    assert daemon.job("c2")["state"] == "cancelled"
    assert "last error:  parent job 'c1' ended cancelled" in daemon.cli("show", "c2")
    assert daemon.job("c1")["history"] == []  # never ran


def test_after_any_runs_after_a_failed_parent_and_reads_its_exit_code(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    out = tmp_path / "env"
    daemon.cli("enqueue", "--id", "p", "--max-retries", "0", "--", "echo partial; exit 3")
    child = (
        'echo "$QUEUECTL_PARENTS|$QUEUECTL_PARENT_1_ID|$QUEUECTL_PARENT_1_STATE|'
        f'$QUEUECTL_PARENT_1_EXIT|$QUEUECTL_PARENT_1_LOG" > {out}; '
        'grep -q partial "$QUEUECTL_PARENT_1_LOG"'
    )
    daemon.cli("enqueue", "--id", "cleanup", "--after-any", "p", "--", child)
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("cleanup", "completed")
    assert daemon.job("p")["state"] == "dead"
    parents, pid, state, code, log = out.read_text().strip().split("|")
    assert (parents, pid, state, code) == ("p", "p", "dead", "3")
    assert log == str(daemon.log_dir / "job_p.txt")


def test_unknown_parents_and_cycles_are_refused_with_nothing_stored(
    daemon: QueueDaemon, tmp_path: Path
) -> None:
    unknown = daemon.run("enqueue", "--id", "x", "--after", "nope", "--", "true")
    assert unknown.returncode == 1
    assert "waits on job 'nope', which does not exist" in unknown.stderr
    lines = tmp_path / "jobs.jsonl"
    lines.write_text(
        '{"id": "a", "command": "true"}\n'
        '{"id": "b", "command": "true", "after": ["a", "c"]}\n'
        '{"id": "c", "command": "true", "after": ["b"]}\n'
    )
    cycle = daemon.run("enqueue", "--file", str(lines))
    assert cycle.returncode == 1
    assert "'b' -> 'c' -> 'b' wait on each other" in cycle.stderr
    assert sum(daemon.counts().values()) == 0  # neither request stored anything


def test_a_file_line_may_wait_on_an_earlier_line(daemon: QueueDaemon, tmp_path: Path) -> None:
    out = tmp_path / "order"
    lines = tmp_path / "jobs.jsonl"
    lines.write_text(
        json.dumps({"id": "one", "command": f"sleep 0.2; {stamp_cmd(out, 'one')}"})
        + "\n"
        + json.dumps({"id": "two", "command": stamp_cmd(out, "two"), "after": ["one"]})
        + "\n"
    )
    daemon.cli("enqueue", "--file", str(lines))
    daemon.cli("worker", "start", "--count", "2")
    daemon.wait_for_state("two", "completed")
    assert [name for name, _ in stamps(out)] == ["one", "two"]


def test_cancelling_a_blocked_job_cancels_its_dependents(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "later", "--delay", "1h", "--", "true")
    daemon.cli("enqueue", "--id", "b1", "--after", "later", "--", "true")
    daemon.cli("enqueue", "--id", "b2", "--after", "b1", "--", "true")
    out = daemon.cli("cancel", "b1")
    assert out.splitlines() == ["cancelled job b1", "cancelled job b2"]
    assert daemon.job("b2")["last_error"] == "parent job 'b1' ended cancelled"
    assert daemon.job("later")["state"] == "waiting"


# -- schedules ------------------------------------------------------------------------------


def tick_of(job_id: str) -> float:
    """The tick a schedule's job was made for (its id ends in the tick's UTC time)."""
    stamp = job_id.rsplit(".", 1)[1]
    return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC).timestamp()


def schedule_jobs(events: Iterator[dict[str, object]], name: str, n: int) -> list[str]:
    """The ids of the next ``n`` jobs schedule ``name`` enqueues, as the daemon announces them."""
    ids: list[str] = []
    for event in events:
        job_id = str(event.get("id", ""))
        if event["type"] == "enqueued" and job_id.startswith(f"{name}."):
            ids.append(job_id)
            if len(ids) == n:
                return ids
    raise AssertionError("the event stream ended")


def test_a_one_second_schedule_fires_once_per_tick(daemon: QueueDaemon) -> None:
    with daemon.client() as c:
        events = c.watch()
        # No workers: with `queue` every tick makes a job (waiting on the one before).
        daemon.cli(
            "schedule", "add", "tick", "--cron", "* * * * * */1", "--overlap", "queue", "--", "true"
        )
        ids = schedule_jobs(events, "tick", 3)
    ticks = [tick_of(i) for i in ids]
    assert ticks == [ticks[0], ticks[0] + 1, ticks[0] + 2]
    shown = daemon.cli_json("schedule", "show", "tick")
    assert shown["last_at"] >= ticks[-1] and shown["next_at"] > shown["last_at"]
    listing = daemon.cli("schedule", "list")
    assert "tick" in listing and "* * * * * */1" in listing
    daemon.cli("schedule", "remove", "tick")
    assert daemon.run("schedule", "show", "tick").returncode == 1


def test_a_kill_at_the_tick_yields_one_job_for_it(daemon: QueueDaemon) -> None:
    with daemon.client() as c:
        events = c.watch()
        daemon.cli(
            "schedule", "add", "k", "--cron", "* * * * * */1", "--overlap", "queue", "--", "true"
        )
        (first,) = schedule_jobs(events, "k", 1)
        daemon.kill9()  # at the tick: while the next one may be firing
    daemon.start()
    with daemon.client() as c:
        events = c.watch()
        schedule_jobs(events, "k", 2)  # ticks after the restart come
    with daemon.client() as c:
        jobs, _ = c.list_jobs(limit=1000)
    ids = [j["id"] for j in jobs if j["id"].startswith("k.")]
    ticks = [tick_of(i) for i in ids]
    assert first in ids
    assert len(ticks) == len(set(ticks)), ids  # exactly one job per tick


def test_skip_never_lets_two_runs_overlap(daemon: QueueDaemon, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    command = f"{stamp_cmd(out, 'start')}; sleep 1.5; {stamp_cmd(out, 'end')}"
    daemon.cli("worker", "start", "--count", "4")
    daemon.cli("schedule", "add", "slow", "--cron", "* * * * * */1", "--", command)
    wait_for(lambda: len(stamps(out)) >= 6, timeout=30, what="three runs")
    daemon.cli("schedule", "pause", "slow")
    names = [name for name, _ in stamps(out)]
    # start, end, start, end...: a run never starts while another one runs.
    assert names[:6] == ["start", "end"] * 3, names
    assert "paused" in daemon.cli("schedule", "list")


@pytest.mark.daemon_config(kill_grace=1)
def test_replace_kills_the_running_run_and_the_next_follows_it(daemon: QueueDaemon) -> None:
    daemon.cli("worker", "start", "--count", "2")
    with daemon.client() as c:
        events = c.watch()
        daemon.cli(
            "schedule",
            "add",
            "r",
            "--cron",
            "* * * * * */1",
            "--overlap",
            "replace",
            "--",
            "sleep 60",
        )
        first, second = schedule_jobs(events, "r", 2)
    daemon.cli("schedule", "pause", "r")
    old = daemon.wait_for_state(first, "cancelled")
    assert old["history"][-1]["outcome"] == "killed"
    # The next run waited for the killed one to end (after_any), so they never overlap.
    (parent,) = daemon.job(second)["parents"]
    assert (parent["id"], parent["any_outcome"]) == (first, True)
    daemon.wait_for_state(second, "processing", "cancelled")


@pytest.mark.daemon_config(workers=0)
def test_catch_up_after_a_downtime_follows_each_policy(daemon: QueueDaemon) -> None:
    with daemon.client() as c:
        for policy in ("latest", "all", "none"):
            spec = {"command": "true"}
            c.schedule_add(policy, "* * * * * */1", spec, catch_up=policy, overlap="queue")
    daemon.stop()
    stopped = time.time()
    wait_for(lambda: time.time() > stopped + 4, timeout=10, what="four ticks of downtime")
    daemon.start()
    with daemon.client() as c:
        schedule_jobs(c.watch(), "none", 1)  # a tick after the start: catch-up is done
        jobs, _ = c.list_jobs(limit=1000)
    (started,) = [e["started"] for e in daemon.log_events() if e["event"] == "scheduler_started"][
        1:
    ]

    def missed(name: str) -> list[float]:
        ticks = [tick_of(j["id"]) for j in jobs if j["id"].startswith(f"{name}.")]
        return [t for t in ticks if stopped < t < started]

    assert len(missed("latest")) == 1
    assert len(missed("all")) >= 4
    assert missed("none") == []


def test_schedule_run_and_bad_input(daemon: QueueDaemon) -> None:
    bad = daemon.run("schedule", "add", "x", "--cron", "every day", "--", "true")
    assert bad.returncode == 1 and "is not a cron expression" in bad.stderr
    zone = daemon.run(
        "schedule", "add", "x", "--cron", "0 3 * * *", "--tz", "Mars/Base", "--", "true"
    )
    assert zone.returncode == 1 and "unknown time zone" in zone.stderr
    daemon.cli(
        "schedule", "add", "nightly", "--cron", "0 3 * * *", "--tz", "Europe/Berlin", "--", "true"
    )
    again = daemon.run("schedule", "add", "nightly", "--cron", "0 4 * * *", "--", "true")
    assert again.returncode == 1 and "already exists" in again.stderr
    job = json.loads(daemon.cli("schedule", "run", "nightly", "--json"))
    assert job["id"].startswith("nightly.run-")
    shown = daemon.cli("schedule", "show", "nightly")
    assert "Europe/Berlin" in shown and job["id"] in shown


# -- retention --------------------------------------------------------------------------------


@pytest.mark.daemon_config(retention_completed="off")
def test_purge_removes_the_rows_and_the_files_and_nothing_else(daemon: QueueDaemon) -> None:
    for name in ("a", "b", "c"):
        daemon.cli("enqueue", "--id", name, "--", f"echo {name}")
    daemon.cli("enqueue", "--id", "bad", "--max-retries", "0", "--", "exit 1")
    daemon.cli("enqueue", "--id", "parent", "--", "true")
    daemon.cli("worker", "start", "--count", "2")
    daemon.watch_until_idle()
    daemon.cli("worker", "stop")
    # A completed parent that a blocked job still waits on is kept.
    daemon.cli("enqueue", "--id", "later", "--delay", "1h", "--", "true")
    daemon.cli("enqueue", "--id", "child", "--after", "parent", "--after", "later", "--", "true")
    logs = {p.name for p in daemon.log_dir.iterdir()}
    assert {"job_a.txt", "job_b.txt", "job_c.txt", "job_bad.txt"} <= logs

    dry = daemon.cli("purge", "--state", "completed", "--older-than", "0", "--dry-run")
    assert dry.startswith("would remove 3 completed jobs")
    assert daemon.counts()["completed"] == 4
    done = daemon.cli_json("purge", "--state", "completed", "--older-than", "0")
    assert done["jobs"] == 3 and done["bytes_freed"] > 0
    left = {p.name for p in daemon.log_dir.iterdir()}
    assert left == logs - {"job_a.txt", "job_b.txt", "job_c.txt"}
    assert daemon.run("show", "a").returncode == 1
    counts = daemon.counts()
    assert (counts["completed"], counts["dead"], counts["blocked"]) == (1, 1, 1)
    assert daemon.job("child")["parents"][0]["id"] == "parent"
    young = daemon.cli("purge", "--state", "dead", "--older-than", "1h")
    assert young.startswith("removed 0 dead jobs")
    vacuum = daemon.cli("vacuum")
    assert "queue database:" in vacuum
    sizes = daemon.cli_json("vacuum", "--json")  # the store's own size, on either store
    assert sizes["bytes_before"] > 0 and sizes["bytes_after"] > 0


@pytest.mark.daemon_config(retention_completed="1s", retention_every=1)
def test_retention_purges_old_completed_jobs_by_itself(daemon: QueueDaemon) -> None:
    daemon.cli("enqueue", "--id", "old", "--", "true")
    daemon.cli("worker", "start", "--count", "1")
    daemon.wait_for_state("old", "completed")

    def gone() -> bool:
        with Client.connect(str(daemon.socket), autostart=False) as c:
            return sum(c.status()["counts"].values()) == 0

    wait_for(gone, timeout=20, what="retention to purge the job")
    assert not (daemon.log_dir / "job_old.txt").exists()
