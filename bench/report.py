"""The report: the table between the markers of docs/benchmarks.md, and docs/benchmarks.png."""

# The report is Markdown for people: en dashes, multiplication and division signs on purpose.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core import REPO, log

DOC = REPO / "docs" / "benchmarks.md"
CHART = REPO / "docs" / "benchmarks.png"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def fmt(s: dict[str, Any] | None, digits: int = 0, suffix: str = "") -> str:
    """``median (min–max)``, or ``–`` when not measured."""
    if not s:
        return "–"

    def one(v: float) -> str:
        return f"{v:,.{digits}f}"

    return f"{one(s['median'])}{suffix} ({one(s['min'])}–{one(s['max'])})"


def _get(res: dict[str, Any], *path: str) -> Any:
    node: Any = res
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def table(res: dict[str, Any]) -> str:
    d = res.get("drain") or {}
    jobs = d.get("jobs", {})
    rows = [
        "| measure | queuectl | task-spooler | nq | huey (SQLite) | limit "
        "| queuectl ÷ reference | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows.append(
        f"| drain: {jobs.get('queuectl', 2000):,} × `true`, 2 workers (jobs/s) "
        f"| **{fmt(d.get('queuectl'))}** "
        f"| {fmt(d.get('task-spooler'))} ({jobs.get('task-spooler', '')} jobs) "
        f"| {fmt(d.get('nq'))} | {fmt(d.get('huey'))} "
        f"| 2 Python spawners {fmt(d.get('ceiling_python'))}; xargs -P2 "
        f"{fmt(d.get('ceiling_xargs'))}; spawners + a log file per job "
        f"{fmt(d.get('ceiling_python_logfile'))} "
        f"| ÷ spawners {fmt(d.get('ratio_to_ceiling'), 2)}; ÷ spawners + log file "
        f"{fmt(d.get('ratio_to_ceiling_with_logfile'), 2)}; ÷ best peer "
        f"{fmt(d.get('ratio_to_best_peer'), 2)} | ≥ 0.80 of spawners, ≥ 2 × best peer |"
    )
    b = res.get("batch") or {}
    rows.append(
        f"| batch enqueue, {b.get('jobs', 10000):,} jobs, one connection, durable (jobs/s) "
        f"| **{fmt(b.get('queuectl'))}** | – | – | library, one call a job: "
        f"{fmt(b.get('huey_library'))} | – | – | ≥ 50,000 |"
    )
    c = res.get("cli") or {}
    rows.append(
        f"| one `enqueue` process (ms, median of {c.get('samples_per_round', 200)} a round) "
        f"| **{fmt(c.get('queuectl'), 1)}** | {fmt(c.get('task-spooler'), 1)} "
        f"| {fmt(c.get('nq'), 1)} | – | `python -c pass` {fmt(c.get('python'), 1)} "
        f"| ÷ python {fmt(c.get('ratio_to_python'), 2)} | ≤ 3 × python |"
    )
    p = res.get("pickup") or {}
    for q, target in (("p50_ms", "≤ 2 ms"), ("p95_ms", "≤ 5 ms")):
        rows.append(
            f"| idle pickup {q[:3]} (ms, {p.get('samples_per_round', 100)} jobs a round) "
            f"| **{fmt(_get(p, q, 'queuectl'), 2)}** | {fmt(_get(p, q, 'task-spooler'), 2)} "
            f"| {fmt(_get(p, q, 'nq'), 2)} | {fmt(_get(p, q, 'huey'), 2)} | – | – | {target} |"
        )
    cl = res.get("claim") or {}
    rows.append(
        f"| claim one job (µs, store call, 100 vs {cl.get('pending_big', 1_000_000):,} pending) "
        f"| **{fmt(cl.get('us_per_claim_100'), 1)} vs {fmt(cl.get('us_per_claim_1m'), 1)}** "
        f"| – | – | – | – | 1M ÷ 100: {fmt(cl.get('ratio'), 2)} | ≤ 1.5 |"
    )
    m = res.get("rss") or {}
    rows.append(
        f"| idle daemon + 2 workers, resident (MB; RSS summed, PSS) "
        f"| **{fmt(m.get('rss_mb'), 1)}**; PSS {fmt(m.get('pss_mb'), 1)} "
        f"| – | – | – | – | daemon {fmt(m.get('daemon_rss_mb'), 1)}, worker "
        f"{fmt(m.get('worker_rss_mb'), 1)} | ≤ 60 |"
    )
    s = res.get("scale") or {}
    rows.append(
        f"| drain cost per job, 1,000 vs 10,000 jobs (ms/job) "
        f"| **{fmt(s.get('ms_per_job_1000'), 3)} vs {fmt(s.get('ms_per_job_10000'), 3)}** "
        f"| – | – | – | – | 10k ÷ 1k: {fmt(s.get('ratio'), 2)} | ≈ 1 (no growth) |"
    )
    mach = res.get("machine", {})
    notes = [
        "",
        f"Run {res.get('started')} ({res.get('mode')}, {res.get('reps')} rounds; "
        f"{res.get('seconds')} s) on {mach.get('cpus')} CPUs ({mach.get('cpu_model', '?')}), "
        f"Linux {mach.get('kernel')}, Python {mach.get('python')}, temporary files on "
        f"{mach.get('tmp_fs', '?')}; load average at start {mach.get('loadavg_at_start')}. "
        f"Peers: {res.get('peers', {}).get('versions')}.",
    ]
    if res.get("errors"):
        notes.append("")
        notes.append("Errors during the run: " + "; ".join(res["errors"][:10]))
    return "\n".join(rows + notes)


def chart(res: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return False
    d = res.get("drain") or {}
    names = [
        ("ceiling_python", "2 Python\nspawners", "#999999"),
        ("ceiling_xargs", "xargs -P2", "#bbbbbb"),
        ("ceiling_python_logfile", "spawners\n+ log file", "#cccccc"),
        ("queuectl", "queuectl", "#1f77b4"),
        ("task-spooler", "task-spooler", "#ff7f0e"),
        ("nq", "nq", "#2ca02c"),
        ("huey", "huey\n(SQLite)", "#d62728"),
    ]
    shown = [(k, label, color) for k, label, color in names if d.get(k)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    meds = [d[k]["median"] for k, _, _ in shown]
    lo = [d[k]["median"] - d[k]["min"] for k, _, _ in shown]
    hi = [d[k]["max"] - d[k]["median"] for k, _, _ in shown]
    ax1.bar(
        [label for _, label, _ in shown],
        meds,
        yerr=[lo, hi],
        capsize=4,
        color=[c for _, _, c in shown],
    )
    ax1.set_ylabel("jobs (processes) per second")
    ax1.set_title("Drain with 2 workers: median, min–max", fontsize=11)
    ax1.tick_params(axis="x", labelsize=8)
    p = res.get("pickup") or {}
    pk = [k for k in ("queuectl", "task-spooler", "nq", "huey") if _get(p, "p50_ms", k)]
    x = range(len(pk))
    for offset, q, color in ((-0.2, "p50_ms", "#1f77b4"), (0.2, "p95_ms", "#aec7e8")):
        vals = [p[q][k]["median"] for k in pk]
        ax2.bar([i + offset for i in x], vals, width=0.4, color=color, label=q[:3])
    ax2.set_xticks(list(x), pk, fontsize=8)
    ax2.set_ylabel("milliseconds")
    ax2.set_title("Idle pickup latency (median of rounds)", fontsize=11)
    ax2.legend()
    fig.suptitle(f"queuectl benchmarks, {res.get('started')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(res: dict[str, Any], source: Path) -> None:
    """Rewrite the generated part of docs/benchmarks.md and the chart."""
    block = f"{BEGIN}\n{table(res)}\n\nResults: `{source.name}` (bench/results/).\n{END}"
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        DOC.write_text(head + block + tail)
    else:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(f"# Benchmarks\n\n{block}\n")
    drew = chart(res, CHART)
    log(f"report written to {DOC}" + (f" and {CHART}" if drew else ""))
