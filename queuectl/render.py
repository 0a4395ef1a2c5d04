"""Output for people (tables, event lines) and for programs (``--json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from queuectl.protocol import JobState, JobView, StatusView


def to_json(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "replace")
        raise TypeError(type(obj).__name__)

    return json.dumps(value, indent=2, default=default, ensure_ascii=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table: header, rule, rows (the seed's ``state | count`` look)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    for row in cells[1:]:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def shorten(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def status(view: StatusView) -> str:
    rows = [(state.value, view["counts"].get(state.value, 0)) for state in JobState]
    w = view["workers"]
    out = table(("state", "count"), rows)
    out += f"\n\nworkers: {w['running']} running / {w['desired']} desired, {w['busy']} busy"
    if view["draining"]:
        out += "\ndaemon: draining (shutting down)"
    return out


def jobs(views: Sequence[JobView], total: int) -> str:
    rows = [
        (
            j["id"],
            j["state"],
            f"{j['attempts']}/{j['max_retries'] + 1}",
            "" if j["last_exit_code"] is None else j["last_exit_code"],
            when(j["updated_at"]),
            shorten(j["command"]),
        )
        for j in views
    ]
    out = table(("id", "state", "attempts", "exit", "updated", "command"), rows)
    if total > len(views):
        out += f"\n({len(views)} of {total} shown; use --limit and --offset for more)"
    return out


def job_detail(j: JobView) -> str:
    lines = [
        f"id:          {j['id']}",
        f"command:     {j['command']}",
        f"state:       {j['state']}",
        f"attempts:    {j['attempts']} (max retries {j['max_retries']}, "
        f"interruptions {j['interruptions']})",
        f"timeout:     {j['timeout']:g}s",
        f"created:     {when(j['created_at'])}",
        f"updated:     {when(j['updated_at'])}",
    ]
    if j["state"] in ("pending", "failed"):
        lines.append(f"runs at:     {when(j['run_at'])}")
    if j["last_error"]:
        lines.append(f"last error:  {j['last_error']}")
    if j["history"]:
        rows = [
            (
                a["attempt"],
                when(a["started_at"]),
                "" if a["finished_at"] is None else f"{a['finished_at'] - a['started_at']:.3f}s",
                "" if a["exit_code"] is None else a["exit_code"],
                a["outcome"] or "running",
                a["error"] or "",
            )
            for a in j["history"]
        ]
        lines += ["", table(("attempt", "started", "took", "exit", "outcome", "error"), rows)]
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
    if kind == "idle":
        return "[INFO] queue drained: no job pending, running or waiting for a retry"
    return None
