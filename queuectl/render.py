"""Output for people (tables, event lines) and for programs (``--json``).

Cheap to import (no typing, json or protocol classes at import time): the fast
``queuectl status`` path (:mod:`queuectl.fastcli`) renders with it.
"""

from __future__ import annotations

import time

from queuectl.sizes import format_size, human_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from queuectl.protocol import (
        JobView,
        NodeView,
        ParentView,
        QueueView,
        ScheduleView,
        StatusView,
    )

# queuectl.protocol.JobState's values, in its order (tests/unit/test_cli_help.py checks).
STATES = (
    "pending",
    "waiting",
    "blocked",
    "processing",
    "completed",
    "failed",
    "dead",
    "cancelled",
)


def to_json(value: Any) -> str:
    import json  # loads re: only for --json

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "replace")
        raise TypeError(type(obj).__name__)

    return json.dumps(value, indent=2, default=default, ensure_ascii=False)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    width: int | None = None,
    elastic: Sequence[int | tuple[int, int]] = (),
) -> str:
    """A plain aligned table: header, rule, rows (the seed's ``state | count`` look).

    With ``width``, the ``elastic`` columns (in that order; ``(column, floor)`` to stop
    at a width) are narrowed, their cells elided with "…", until the table fits.
    """
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    cells = [[one_line(c) for c in row] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if width is not None:
        excess = sum(widths) + 3 * (len(widths) - 1) - width
        for step in elastic:
            i, floor = step if isinstance(step, tuple) else (step, MIN_ELASTIC)
            cut = min(excess, widths[i] - max(len(cells[0][i]), floor))
            if cut > 0:
                widths[i] -= cut
                excess -= cut
        cells = [[_elide(c, w) for c, w in zip(row, widths, strict=True)] for row in cells]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


MIN_ELASTIC = 10


def _elide(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# One rule for times people read: local time, the zone named (in a table's header, or
# after the time). JSON keeps the epoch seconds; job log files keep UTC.


def zone(ts: float | None = None) -> str:
    """The local time zone's abbreviation (``UTC``, ``CET``) at ``ts`` (default: now)."""
    return time.strftime("%Z", time.localtime(ts))


def when(ts: float | None) -> str:
    """``2026-12-01 04:14:21`` in local time."""
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def when_zoned(ts: float | None) -> str:
    """``2026-12-01 04:14:21 CET``."""
    return "" if ts is None else f"{when(ts)} {zone(ts)}"


def stamp(ts: float | None, now: float | None = None) -> str:
    """Compact, for tables: ``04:14:21`` today, else ``2026-11-30 04:14``."""
    if ts is None:
        return ""
    local = time.localtime(ts)
    if local[:3] == time.localtime(now)[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def clock(ts: Any) -> str:
    """``04:14:21`` local (a watch line's time column)."""
    if not isinstance(ts, int | float):
        ts = time.time()
    return time.strftime("%H:%M:%S", time.localtime(ts))


_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r", 127: "\\x7f"}


def size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def one_line(text: str) -> str:
    """``text`` as it is, with control characters (newlines...) shown as escapes."""
    return text.translate(_CONTROL)


def shorten(text: str, width: int = 48) -> str:
    """The text as it will run (spaces kept), on one line, elided with "…" if too long."""
    return _elide(one_line(text), width)


# The seed's status table; a state of job control (waiting, cancelled) gets its row
# when it holds a job.
SEED_STATES = ("pending", "processing", "completed", "failed", "dead")


def status(view: StatusView) -> str:
    counts = view["counts"]
    rows = [(s, counts.get(s, 0)) for s in STATES if s in SEED_STATES or counts.get(s, 0)]
    w = view["workers"]
    out = table(("state", "count"), rows)
    by_queue = view.get("queues") or {}
    if len(by_queue) > 1:
        out += "\n\n" + queue_counts(by_queue)
    out += f"\n\nworkers: {w['running']} running / {w['desired']} desired, {w['busy']} busy"
    cluster = view.get("nodes") or []
    if len(cluster) > 1:  # one daemon: the workers line says it all
        out += "\n\n" + nodes(cluster)
    if view["draining"]:
        out += "\ndaemon: draining (shutting down)"
    return out


def nodes(views: Sequence[NodeView]) -> str:
    """`nodes`: every daemon sharing the store, with its slots and running jobs."""
    now = time.time()
    rows = [
        (
            ("* " if n["this"] else "") + n["name"],
            n["host"],
            n["pid"],
            n["state"],
            n["slots"],
            n["running"],
            f"{max(0.0, now - n['heartbeat_at']):.0f}s ago",
        )
        for n in views
    ]
    return table(("node", "host", "pid", "state", "slots", "running", "heartbeat"), rows)


QUEUE_STATES = ("pending", "waiting", "processing", "failed", "dead")


def queue_counts(by_queue: Mapping[str, Mapping[str, int]]) -> str:
    """One line per queue: its jobs by state (the states with work or trouble)."""
    headers = ("queue", *("running" if s == "processing" else s for s in QUEUE_STATES))
    rows = [(q, *(c.get(s, 0) for s in QUEUE_STATES)) for q, c in sorted(by_queue.items())]
    return table(headers, rows)


def queues(views: Sequence[QueueView]) -> str:
    """`queue list`: per queue its counts, limits and whether it is paused."""
    rows = [
        (
            q["name"],
            q["counts"].get("pending", 0),
            q["counts"].get("waiting", 0),
            q["counts"].get("processing", 0),
            q["counts"].get("dead", 0),
            "" if q["concurrency"] is None else q["concurrency"],
            q["rate"] or "",
            "paused" if q["paused"] else "",
        )
        for q in views
    ]
    headers = ("queue", "pending", "waiting", "running", "dead", "concurrency", "rate", "paused")
    return table(headers, rows)


def enqueued(j: JobView) -> str:
    """The answer to an enqueue: the job stored, or the unfinished one holding its key."""
    if j.get("existing"):
        return (
            f"job {j['id']} already holds unique key {j.get('unique_key')!r} "
            f"({j['state']}); nothing enqueued"
        )
    if j["state"] == "waiting":
        return f"enqueued job {j['id']}: {j['command']} (waits until {stamp(j['run_at'])})"
    if j["state"] == "blocked":
        after = ", ".join(p["id"] for p in j.get("parents", []))
        return f"enqueued job {j['id']}: {j['command']} (runs after {after})"
    if j["state"] == "cancelled":
        return f"enqueued job {j['id']}, cancelled at once: {j['last_error']}"
    return f"enqueued job {j['id']}: {j['command']}"


def parent_text(p: ParentView) -> str:
    """``a (completed, exit 0)``; ``any`` marks a parent whose outcome does not matter."""
    detail = p["state"] + ("" if p["exit_code"] is None else f", exit {p['exit_code']}")
    return f"{p['id']} ({detail}{', any outcome' if p['any_outcome'] else ''})"


def blocked(views: Sequence[JobView], total: int, width: int | None = 80) -> str:
    """`list --blocked`: what each blocked job waits on."""
    rows = [
        (
            j["id"],
            ", ".join(parent_text(p) for p in j.get("parents", []) if p["state"] != "completed"),
            j["command"],
        )
        for j in views
    ]
    out = table(("id", "waits on", "command"), rows, width, elastic=(2, 1))
    if total > len(views):
        out += f"\n({len(views)} of {total} shown; use --limit and --offset for more)"
    return out


def state_text(j: JobView) -> str:
    """The state, with the time a waiting or failed job is due."""
    if j["state"] in ("waiting", "failed"):
        return f"{j['state']} until {stamp(j['run_at'])}"
    return j["state"]


def jobs(views: Sequence[JobView], total: int, width: int | None = 80) -> str:
    """The job table; commands as they will run, elided to fit ``width`` (None: in full)."""
    rows = [
        (
            j["id"],
            state_text(j),
            f"{j['attempts']}/{j['max_retries'] + 1}",
            "" if j["last_exit_code"] is None else j["last_exit_code"],
            stamp(j["updated_at"]),
            j["command"],
        )
        for j in views
    ]
    headers = ("id", "state", "attempts", "exit", f"updated {zone()}", "command")
    # Long ids give way first (to 16), then the command, then ids again.
    out = table(headers, rows, width, elastic=((0, 16), 5, (0, 4)))
    if total > len(views):
        out += f"\n({len(views)} of {total} shown; use --limit and --offset for more)"
    return out


def _cpu(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.3f}s"


def _peak(size: int | None) -> str:
    return "" if size is None else human_size(size)


def job_detail(j: JobView, width: int | None = 80) -> str:
    lines = [
        f"id:          {j['id']}",
        f"command:     {j['command']}",
        f"cwd:         {j.get('cwd') or ''}",
        f"state:       {j['state']}",
        f"queue:       {j.get('queue', 'default')}   priority: {j.get('priority', 0)}",
        # Attempts count toward the retry limit (reset by `dlq retry`); the history
        # below keeps every run, so say both, or the numbers seem to disagree.
        f"attempts:    {j['attempts']} of {j['max_retries'] + 1} allowed; "
        f"{len(j['history'])} runs recorded, {j['interruptions']} interrupted",
        f"timeout:     {j['timeout']:g}s",
        f"created:     {when_zoned(j['created_at'])}",
        f"updated:     {when_zoned(j['updated_at'])}",
    ]
    limits = [
        f"{name} {value}"
        for name, value in (
            ("memory", j.get("memory") and format_size(j.get("memory") or 0)),
            ("cpus", j.get("cpus") and f"{j.get('cpus'):g}"),
            ("max-procs", j.get("max_procs")),
        )
        if value
    ]
    if limits:
        lines.append(f"limits:      {', '.join(limits)}")
    if j["state"] == "waiting":
        lines.append(f"runs at:     {when_zoned(j['run_at'])}")
    elif j["state"] == "failed":
        lines.append(f"next retry:  {when_zoned(j['run_at'])}")
    for n, parent in enumerate(j.get("parents", [])):
        lines.append(f"{'after:' if n == 0 else '':<13}{parent_text(parent)}")
    if j.get("children"):
        lines.append(f"before:      {', '.join(j['children'])}")
    if j.get("unique_key"):
        lines.append(f"unique key:  {j['unique_key']}")
    for name, value in sorted((j.get("env") or {}).items()):
        lines.append(f"env:         {name}={value}")
    if "backoff_base" in j:
        lines.append(
            f"retry:       backoff {j['backoff_base']:g} ** attempts s, "
            f"at most {j['backoff_max']:g}s, jitter {j['jitter']:g}"
        )
    if j["last_error"]:
        lines.append(f"last error:  {j['last_error']}")
    if j["history"]:
        # CPU time and peak memory get columns of their own when the table may be wide
        # (--wide); in 80 columns, a line for the last attempt that has them.
        wide = width is None or width >= 100
        rows = [
            (
                a["attempt"],
                stamp(a["started_at"]),
                "" if a["finished_at"] is None else stamp(a["finished_at"]),
                "" if a["finished_at"] is None else f"{a['finished_at'] - a['started_at']:.3f}s",
                "" if a["exit_code"] is None else a["exit_code"],
                *((_cpu(a.get("cpu_seconds")), _peak(a.get("peak_bytes"))) if wide else ()),
                a["outcome"] or "running",
                a["worker"] or "",
                a["error"] or "",
            )
            for a in j["history"]
        ]
        headers: tuple[str, ...] = ("attempt", f"started {zone()}", "ended", "took", "exit")
        headers += ("cpu", "peak") if wide else ()
        headers += ("outcome", "worker", "error")
        lines += ["", table(headers, rows, width, elastic=(len(headers) - 1,))]
        used = [a for a in j["history"] if a.get("cpu_seconds") is not None]
        if used and not wide:
            last = used[-1]
            lines.append(
                f"attempt {last['attempt']} used: cpu {_cpu(last.get('cpu_seconds'))}, "
                f"peak memory {_peak(last.get('peak_bytes')) or 'not known'}"
            )
    return "\n".join(lines)


def waited(view: Any) -> str:
    """``queuectl wait``: one line per job, ``job1  completed`` / ``job2  dead: exit code 2``."""
    lines = []
    width = max(len(j["id"]) for j in view["jobs"])
    for job in view["jobs"]:
        detail = ""
        if job["state"] != "completed" and job["final"]:
            code = job["last_exit_code"]
            detail = f": exit code {code}" if code else f": {job['last_error'] or 'no exit code'}"
        elif not job["final"]:
            detail = " (not final yet)"
        lines.append(f"{job['id']:<{width}}  {job['state']}{detail}")
    if view["timed_out"]:
        lines.append("timed out before every job was final")
    return "\n".join(lines)


def event_line(event: dict[str, Any]) -> str | None:
    """One line per job event, in the seed's ``[INFO] [job1] processing -> ...`` style."""
    kind, job = event.get("type"), event.get("id")
    if kind == "started":
        return f"[INFO] [{job}] processing -> `{event.get('command')}` (attempt {event['attempt']})"
    if kind == "completed":
        return f"[INFO] [{job}] completed ✔"
    if kind == "failed":
        delay = max(0.0, float(event.get("retry_at", 0)) - float(event["time"]))
        return (
            f"[WARN] [{job}] failed ({event.get('error')}); "
            f"retry {event.get('retry')}/{event.get('max_retries')} in {delay:.0f}s"
        )
    if kind == "dead":
        return f"[WARN] [{job}] moved to DLQ ({event.get('error')})"
    if kind == "pending":
        return f"[WARN] [{job}] interrupted ({event.get('error')}); back in the queue"
    if kind == "enqueued":
        return f"[INFO] [{job}] enqueued"
    if kind == "cancelled":
        return f"[WARN] [{job}] cancelled ({event.get('reason') or event.get('error')})"
    if kind == "unblocked":
        return f"[INFO] [{job}] its parents are done; {event.get('state')}"
    if kind == "idle":
        scheduled, next_at = event.get("scheduled") or 0, event.get("next_at")
        if not scheduled:
            return "[INFO] queue drained: no job pending, running or waiting for a retry"
        jobs = "1 job waits" if scheduled == 1 else f"{scheduled} jobs wait"
        if not isinstance(next_at, int | float):
            return f"[INFO] nothing to run now: {jobs} for a later time"
        soon = next_at - float(event.get("time") or time.time()) < 86400
        at = time.strftime("%H:%M:%S" if soon else "%Y-%m-%d %H:%M:%S", time.localtime(next_at))
        return f"[INFO] nothing to run now: {jobs} for a later time, the first at {at}"
    if kind == "stopped":
        return "[INFO] queuectld stopped"
    return None


def schedules(views: Sequence[ScheduleView], width: int | None = 80) -> str:
    """`schedule list`: when each fires next, and how its last job is doing."""
    rows = [
        (
            s["name"],
            s["cron"] + ("" if s["tz"] == "UTC" else f" {s['tz']}"),
            "paused" if s["paused"] else stamp(s["next_at"]),
            stamp(s["last_at"]) if s["last_at"] is not None else "",
            "" if s["last_job"] is None else f"{s['last_job']} ({s['last_state'] or 'purged'})",
            s["job"].get("command", ""),
        )
        for s in views
    ]
    headers = ("name", "cron", f"next {zone()}", "last", "last job", "command")
    return table(headers, rows, width, elastic=(5, 4, 1))


def schedule_detail(s: ScheduleView) -> str:
    """`schedule show`: every setting, and the last run."""
    job = dict(s["job"])
    lines = [
        f"name:        {s['name']}",
        f"cron:        {s['cron']}   (time zone {s['tz']})",
        f"command:     {job.pop('command', '')}",
        f"overlap:     {s['overlap']}   catch-up: {s['catch_up']}",
        f"next tick:   {'paused' if s['paused'] else when_zoned(s['next_at'])}",
        f"last tick:   {when_zoned(s['last_at']) if s['last_at'] is not None else 'none yet'}",
    ]
    if s["last_job"] is not None:
        lines.append(f"last job:    {s['last_job']} ({s['last_state'] or 'purged'})")
    for key, value in sorted(job.items()):
        lines.append(f"job {key + ':':<8} {value}")
    return "\n".join(lines)
