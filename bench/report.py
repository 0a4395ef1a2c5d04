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
# The concurrency table has a block of its own, so that ``--only concurrency`` can
# rewrite it alone; each block names the run it comes from.
CONC_BEGIN, CONC_END = "<!-- bench:concurrency:begin -->", "<!-- bench:concurrency:end -->"
MAIN_SECTIONS = ("drain", "batch", "cli", "pickup", "claim", "rss", "scale")
# Issue 8's targets for the 1,000 point.
CONC_TARGET_N, CONC_TARGET_PSS_MB, CONC_TARGET_RAMP_S = 1000, 100, 2.0


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
    return "\n".join(rows + run_notes(res, res.get("reps")))


def run_notes(res: dict[str, Any], rounds: Any) -> list[str]:
    """The run a table comes from: when, where, what with, and what went wrong."""
    mach = res.get("machine", {})
    measured = [k for k in (*MAIN_SECTIONS, "concurrency") if res.get(k)]
    only = "" if len(measured) > 2 else f", {', '.join(measured)} only"
    notes = [
        "",
        f"Run {res.get('started')} ({res.get('mode')}{only}, {rounds} rounds; "
        f"{res.get('seconds')} s) on {mach.get('cpus')} CPUs ({mach.get('cpu_model', '?')}), "
        f"Linux {mach.get('kernel')}, Python {mach.get('python')}, temporary files on "
        f"{mach.get('tmp_fs', '?')}; load average at start {mach.get('loadavg_at_start')}. "
        f"Peers: {res.get('peers', {}).get('versions')}.",
    ]
    if res.get("errors"):
        notes.append("")
        notes.append("Errors during the run: " + "; ".join(res["errors"][:10]))
    return notes


def _ramp(node: dict[str, Any], n: int, timeout: Any) -> str:
    """Seconds until all ran; rounds that never got there say how far they got."""
    out = fmt(node.get("ramp_s"), 2)
    if node.get("incomplete"):
        reached = node.get("running") or {}
        out = (
            f"{out}; {node['incomplete']} of {node.get('rounds')} rounds never had all "
            f"{n:,} running within {timeout:g} s (reached {fmt(reached)})"
        )
    return out


def med(s: dict[str, Any] | None, digits: int = 0) -> str:
    """The median alone (for figures that hardly move between rounds)."""
    return f"{s['median']:,.{digits}f}" if s else "–"


def conc_table(res: dict[str, Any]) -> str:
    """N jobs running at once: the queue's own memory, time until all run, its CPU."""
    c = res.get("concurrency") or {}
    timeout = c.get("ramp_timeout_s", 60)
    rows = [
        "| jobs at once | queuectl: PSS / RSS (MB), processes | all running after (s) "
        "| CPU (% of a CPU) | task-spooler: PSS / RSS (MB), processes | all running after (s) "
        "| CPU (% of a CPU) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, point in sorted((c.get("points") or {}).items(), key=lambda kv: int(kv[0])):
        n = int(key)
        q = point.get("queuectl") or {}
        t = point.get("task-spooler") or {}
        q_mem = (
            f"**{fmt(q.get('pss_mb'), 1)}** / {fmt(q.get('rss_mb'), 1)}, "
            f"{med(q.get('processes'))} (daemon PSS {med(q.get('daemon_pss_mb'), 1)})"
            if q
            else "–"
        )
        t_mem = "–"
        if t:
            t_mem = (
                f"{fmt(t.get('pss_mb'), 1)} / {fmt(t.get('rss_mb'), 1)}, "
                f"{med(t.get('processes'))} (server PSS {med(t.get('server_pss_mb'), 1)})"
            )
            jobs = t.get("jobs") or {}
            if jobs and jobs.get("min", n) < n:
                t_mem += f"; it took only {med(jobs)} jobs (refuses more connections)"
        target = (
            f"≤ {CONC_TARGET_PSS_MB} MB PSS; all running ≤ {CONC_TARGET_RAMP_S:g} s"
            if n == CONC_TARGET_N
            else "–"
        )
        rows.append(
            f"| {n:,} | {q_mem} | {_ramp(q, n, timeout) if q else '–'} "
            f"| {fmt(q.get('cpu_pct'), 1)} | {t_mem} | {_ramp(t, n, timeout) if t else '–'} "
            f"| {fmt(t.get('cpu_pct'), 1)} | {target} |"
        )
    rounds = max(
        (
            node.get("rounds", 0)
            for point in (c.get("points") or {}).values()
            for node in point.values()
        ),
        default=0,
    )
    notes = [
        "",
        f"Jobs: `sleep {c.get('sleep_s')}`, killed when the point ends. Memory "
        f"{c.get('settle_s', 1):g} s after all were running (or the wait for them gave up); "
        f"CPU over the {c.get('cpu_window_s')} s after that, in % of one CPU. "
        f"Processes: the queue's own (queuectl: daemon + workers/executors; task-spooler: "
        f"server + one client per job), never the jobs.",
    ]
    return "\n".join(rows + notes + run_notes(res, rounds))


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
    points = (res.get("concurrency") or {}).get("points") or {}
    if points:
        fig, (ax1, ax2, ax3) = plt.subplots(
            1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 2, 2]}
        )
        _conc_panel(ax3, points)
    else:
        fig, (ax1, ax2) = plt.subplots(
            1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]}
        )
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


def _conc_panel(ax: Any, points: dict[str, Any]) -> None:
    """PSS of the queue's own processes per N (log scale), ramp seconds above the bars."""
    ns = sorted(points, key=int)
    x = range(len(ns))
    for offset, name, color in ((-0.2, "queuectl", "#1f77b4"), (0.2, "task-spooler", "#ff7f0e")):
        nodes = [points[k].get(name) or {} for k in ns]
        pss = [_get(node, "pss_mb", "median") or 0.0 for node in nodes]
        ax.bar([i + offset for i in x], pss, width=0.4, color=color, label=name)
        for i, node in zip(x, nodes, strict=True):
            ramp = _get(node, "ramp_s", "median")
            if pss[i]:
                label = f"{ramp:.2g} s" if ramp is not None else "never all"
                if ramp is not None and node.get("incomplete"):
                    label += " (some rounds never all)"
                ax.annotate(label, (i + offset, pss[i]), ha="center", va="bottom", fontsize=7)
    if str(CONC_TARGET_N) in ns:
        i = ns.index(str(CONC_TARGET_N))
        ax.hlines(
            CONC_TARGET_PSS_MB,
            i - 0.45,
            i + 0.45,
            colors="red",
            linestyles="dashed",
            label=f"target at {CONC_TARGET_N:,}: {CONC_TARGET_PSS_MB} MB",
        )
    ax.set_yscale("log")
    top = max(
        (_get(points[k].get(name) or {}, "pss_mb", "median") or 1.0)
        for k in ns
        for name in ("queuectl", "task-spooler")
    )
    ax.set_ylim(top=top * 20)  # room above the bars for their labels and the legend
    ax.set_xticks(list(x), [f"{int(k):,}" for k in ns], fontsize=8)
    ax.set_xlabel("sleep jobs running at once")
    ax.set_ylabel("MB, PSS summed (log scale)")
    ax.set_title("Queue's own memory; seconds until all ran", fontsize=11)
    ax.legend(fontsize=8, loc="upper left")


def _put_block(text: str, begin: str, end: str, block: str, after: str | None) -> str:
    """Replace the block between ``begin`` and ``end``; new, it goes after ``after``."""
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        return head + block + tail
    if after and after in text:
        head, tail = text.split(after, 1)
        return f"{head}{after}\n\n{block}{tail}"
    return f"{text.rstrip()}\n\n{block}\n"


def write(res: dict[str, Any], source: Path) -> None:
    """Rewrite the generated parts of docs/benchmarks.md that this run measured, and the chart.

    The main table is rewritten by a run of any of its sections, the concurrency table
    by a run of the concurrency section; the chart only by a run that measured the drain.
    """
    results = f"Results: `{source.name}` (bench/results/)."
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if any(res.get(k) for k in MAIN_SECTIONS):
        text = _put_block(text, BEGIN, END, f"{BEGIN}\n{table(res)}\n\n{results}\n{END}", None)
    if res.get("concurrency"):
        block = f"{CONC_BEGIN}\n{conc_table(res)}\n\n{results}\n{CONC_END}"
        text = _put_block(text, CONC_BEGIN, CONC_END, block, END)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    drew = bool(res.get("drain")) and chart(res, CHART)
    log(f"report written to {DOC}" + (f" and {CHART}" if drew else " (chart unchanged)"))
