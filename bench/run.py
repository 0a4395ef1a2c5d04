"""``python -m bench``: every measurement, repetitions interleaved, results saved, report written.

Each *round* measures every system once, one after the other (queuectl, peer,
queuectl, peer, ...), and ratios are taken within a round, so that the drift of a
shared, noisy machine cancels out. Every figure is reported as the median of the
rounds with their min-max.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ceiling, conc, peers, qc
from bench.core import RESULTS, cleanup, log, machine, ratio_samples, run_dir, summary

PEERS = ("task-spooler", "nq", "huey")


class Plan:
    """Sizes and repetitions of one run."""

    def __init__(
        self,
        quick: bool,
        reps: int | None,
        conc_points: tuple[int, ...] | None = None,
        ramp_timeout: float = conc.RAMP_TIMEOUT,
    ) -> None:
        self.quick = quick
        self.reps = reps or (3 if quick else 5)
        # The long sections (200 CLI processes per system, a 10,000-job drain) get 3 rounds.
        self.slow_reps = min(self.reps, 3)
        self.spawns_each = 500 if quick else 1000
        self.drain_jobs = 1000 if quick else 2000
        self.peer_drain_jobs = 500 if quick else 2000
        self.batch_jobs = 10_000
        self.cli_samples = 20 if quick else 200
        self.pickup_samples = 30 if quick else 100
        self.claim_big = 1_000_000
        self.scale = (1_000, 10_000)
        # Jobs running at once; the quick run measures only the 1,000 point, once.
        self.conc = conc_points or ((1_000,) if quick else (10, 100, 1_000))
        self.conc_reps = reps or (1 if quick else self.slow_reps)
        self.ramp_timeout = ramp_timeout
        self.cpu_window = 2.0 if quick else 3.0


def _try(errors: list[str], what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        errors.append(f"{what}: {exc}")
        log(f"{what} failed: {exc}")
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        return None


def drain_section(plan: Plan, available: dict[str, bool], errors: list[str]) -> dict[str, Any]:
    """Ceilings, queuectl's drain and each peer's, interleaved round by round."""
    series: dict[str, list[float | None]] = {
        k: []
        for k in (
            "ceiling_python",
            "ceiling_xargs",
            "ceiling_python_logfile",
            "queuectl",
            "queuectl_process_groups",
            *PEERS,
        )
    }
    for r in range(plan.reps):
        log(f"drain round {r + 1}/{plan.reps}")
        n = plan.spawns_each
        series["ceiling_python"].append(
            _try(errors, "ceiling", lambda n=n: ceiling.python_spawners(n))  # type: ignore[misc]
        )
        series["queuectl"].append(_try(errors, "queuectl drain", lambda: qc.drain(plan.drain_jobs)))
        # The same drain without a cgroup per attempt: what containment costs.
        series["queuectl_process_groups"].append(
            _try(
                errors,
                "queuectl drain, process groups only",
                lambda: qc.drain(plan.drain_jobs, env={"QUEUECTLD_CGROUP": "off"}),
            )
        )
        if available["task-spooler"]:
            series["task-spooler"].append(
                _try(errors, "tsp drain", lambda: peers.tsp_drain(plan.peer_drain_jobs))
            )
        series["ceiling_xargs"].append(
            _try(errors, "xargs", lambda: ceiling.xargs(2 * plan.spawns_each))
        )
        if available["nq"]:
            series["nq"].append(
                _try(errors, "nq drain", lambda: peers.nq_drain(plan.peer_drain_jobs))
            )
        if available["huey"]:
            series["huey"].append(
                _try(
                    errors,
                    "huey drain",
                    lambda: peers.huey("drain", plan.peer_drain_jobs)["jobs_per_s"],
                )
            )
        if not plan.quick:
            dirs = []
            for i in range(2):
                d = run_dir() / f"ceiling-logs-{r}-{i}"
                d.mkdir()
                dirs.append(str(d))
            series["ceiling_python_logfile"].append(
                _try(
                    errors,
                    "ceiling+log",
                    lambda d=dirs, n=n: ceiling.python_spawners(n, log_dirs=d),  # type: ignore[misc]
                )
            )
    best_peer = [
        max((series[p][i] or 0.0) for p in PEERS if len(series[p]) > i) or None
        if any(len(series[p]) > i for p in PEERS)
        else None
        for i in range(plan.reps)
    ]
    out: dict[str, Any] = {k: summary(v, 1) for k, v in series.items()}
    out["best_peer"] = summary(best_peer, 1)
    out["ratio_to_ceiling"] = summary(ratio_samples(series["queuectl"], series["ceiling_python"]))
    out["ratio_to_ceiling_with_logfile"] = summary(
        ratio_samples(series["queuectl"], series["ceiling_python_logfile"])
    )
    out["ratio_to_best_peer"] = summary(ratio_samples(series["queuectl"], best_peer))
    # Below 1: a cgroup per attempt costs that share of the drain rate (1 where none).
    out["ratio_cgroup_to_process_groups"] = summary(
        ratio_samples(series["queuectl"], series["queuectl_process_groups"])
    )
    out["jobs"] = {
        "queuectl": plan.drain_jobs,
        "queuectl_process_groups": plan.drain_jobs,
        "task-spooler": min(plan.peer_drain_jobs, peers.TSP_MAX_JOBS),
        "nq": plan.peer_drain_jobs,
        "huey": plan.peer_drain_jobs,
        "ceiling_python": 2 * plan.spawns_each,
        "ceiling_xargs": 2 * plan.spawns_each,
    }
    return out


def batch_section(plan: Plan, available: dict[str, bool], errors: list[str]) -> dict[str, Any]:
    q: list[float | None] = []
    h: list[float | None] = []
    for r in range(plan.reps):
        log(f"batch enqueue round {r + 1}/{plan.reps}")
        q.append(_try(errors, "batch enqueue", lambda: qc.batch_enqueue(plan.batch_jobs)))
        if available["huey"] and not plan.quick:
            h.append(
                _try(errors, "huey enqueue", lambda: peers.huey("enqueue", 2000)["jobs_per_s"])
            )
    return {"queuectl": summary(q, 1), "huey_library": summary(h, 1), "jobs": plan.batch_jobs}


def cli_section(plan: Plan, available: dict[str, bool], errors: list[str]) -> dict[str, Any]:
    """One enqueue process, beside a bare interpreter start, invocation by invocation."""
    per_rep: dict[str, list[float | None]] = {
        k: [] for k in ("queuectl", "python", "task-spooler", "nq")
    }
    py = [sys.executable, "-c", "pass"]
    for r in range(plan.slow_reps):
        log(f"cli round {r + 1}/{plan.slow_reps}")
        samples: dict[str, list[float]] = {k: [] for k in per_rep}
        with contextlib.ExitStack() as stack:
            d = stack.enter_context(qc.daemon(workers=0))
            sessions: dict[str, tuple[list[str], dict[str, str]] | None] = {}
            if not plan.quick:
                for name in ("task-spooler", "nq"):
                    if available[name]:
                        sessions[name] = stack.enter_context(peers.cli_peer_session(name))
            try:
                for _ in range(plan.cli_samples):
                    samples["queuectl"].append(qc.one_process(qc.cli_command(), d.env))
                    samples["python"].append(qc.one_process(py, d.env))
                    for name, session in sessions.items():
                        if session is not None:
                            samples[name].append(qc.one_process(*session))
            except Exception as exc:
                errors.append(f"cli: {exc}")
                log(f"cli failed: {exc}")
        for k, v in samples.items():
            s = summary(v)
            per_rep[k].append(s["median"] if s else None)
    out: dict[str, Any] = {k: summary(v) for k, v in per_rep.items()}
    out["ratio_to_python"] = summary(ratio_samples(per_rep["queuectl"], per_rep["python"]))
    out["samples_per_round"] = plan.cli_samples
    return out


def pickup_section(plan: Plan, available: dict[str, bool], errors: list[str]) -> dict[str, Any]:
    names = ["queuectl"]
    # The quick run times task-spooler too (its p50 is in the headline); the full run every peer.
    names += [p for p in PEERS if available[p] and not (plan.quick and p != "task-spooler")]
    p50: dict[str, list[float | None]] = {k: [] for k in names}
    p95: dict[str, list[float | None]] = {k: [] for k in names}
    n = plan.pickup_samples
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "queuectl": lambda: qc.pickup(n),
        "task-spooler": lambda: peers.tsp_pickup(n),
        "nq": lambda: peers.nq_pickup(n),
        "huey": lambda: peers.huey("pickup", n),
    }
    for r in range(plan.reps):
        log(f"pickup round {r + 1}/{plan.reps}")
        for name in names:
            res = _try(errors, f"{name} pickup", runners[name])
            p50[name].append(res["p50_ms"] if res else None)
            p95[name].append(res["p95_ms"] if res else None)
    return {
        "p50_ms": {k: summary(v) for k, v in p50.items()},
        "p95_ms": {k: summary(v) for k, v in p95.items()},
        "samples_per_round": n,
    }


def claim_section(plan: Plan, errors: list[str]) -> dict[str, Any]:
    small, big = run_dir() / "claim-100.db", run_dir() / f"claim-{plan.claim_big}.db"
    log(f"building stores with 100 and {plan.claim_big:,} pending jobs")
    t0 = time.perf_counter()
    qc.build_store(small, 100)
    qc.build_store(big, plan.claim_big)
    log(f"stores built in {time.perf_counter() - t0:.0f} s")
    a: list[float | None] = []
    b: list[float | None] = []
    for r in range(plan.reps):
        log(f"claim round {r + 1}/{plan.reps}")
        a.append(_try(errors, "claim 100", lambda: qc.claim_cost(small)))
        b.append(_try(errors, "claim 1M", lambda: qc.claim_cost(big)))
    return {
        "us_per_claim_100": summary(a, 1),
        "us_per_claim_1m": summary(b, 1),
        "ratio": summary(ratio_samples(b, a)),
        "pending_big": plan.claim_big,
    }


def rss_section(plan: Plan, errors: list[str]) -> dict[str, Any]:
    rows: dict[str, list[float | None]] = {
        k: [] for k in ("rss_mb", "pss_mb", "daemon_rss_mb", "worker_rss_mb")
    }
    for r in range(plan.reps):
        log(f"memory round {r + 1}/{plan.reps}")

        def one() -> dict[str, float]:
            with qc.daemon(workers=2) as d, d.client() as c:
                return qc.idle_rss(d, c)

        res = _try(errors, "rss", one)
        for k in rows:
            rows[k].append(res[k] if res else None)
    return {k: summary(v, 1) for k, v in rows.items()}


def scale_section(plan: Plan, errors: list[str]) -> dict[str, Any]:
    small, big = plan.scale
    a: list[float | None] = []
    b: list[float | None] = []
    for r in range(plan.slow_reps):
        log(f"drain scaling round {r + 1}/{plan.slow_reps}")
        a.append(_try(errors, f"drain {small}", lambda: 1000 / qc.drain(small)))
        b.append(_try(errors, f"drain {big}", lambda: 1000 / qc.drain(big)))
    return {
        f"ms_per_job_{small}": summary(a),
        f"ms_per_job_{big}": summary(b),
        "ratio": summary(ratio_samples(b, a)),
    }


def concurrency_section(
    plan: Plan, available: dict[str, bool], errors: list[str]
) -> dict[str, Any]:
    """N jobs of ``sleep`` at once: queuectl and task-spooler ``-S N``, point by point."""
    sleep_s = conc.sleep_seconds(plan.ramp_timeout)
    keys = ("pss_mb", "rss_mb", "ramp_s", "cpu_pct", "processes", "running", "poll_ms")
    extra = {
        "queuectl": (
            "daemon_pss_mb",
            "daemon_rss_mb",
            "cpu_daemon_pct",
            "executors",
            "start_cmd_s",
        ),
        "task-spooler": ("server_pss_mb", "server_rss_mb", "cpu_server_pct", "jobs"),
    }
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        "queuectl": lambda n: conc.queuectl_point(n, sleep_s, plan.cpu_window, plan.ramp_timeout),
        "task-spooler": lambda n: conc.tsp_point(n, sleep_s, plan.cpu_window, plan.ramp_timeout),
    }
    names = ["queuectl"] + (["task-spooler"] if available["task-spooler"] else [])
    raw: dict[int, dict[str, list[dict[str, Any] | None]]] = {
        n: {name: [] for name in names} for n in plan.conc
    }
    for r in range(plan.conc_reps):
        for n in plan.conc:
            log(f"concurrency round {r + 1}/{plan.conc_reps}: {n:,} jobs at once")
            for name in names:
                res = _try(errors, f"{name} {n} concurrent", functools.partial(runners[name], n))
                raw[n][name].append(res)
                if res and res.get("stopped"):
                    errors.append(
                        f"{name} {n} concurrent: {res['stopped']}, {res['running']} running"
                    )
                if res and res.get("start_error"):
                    errors.append(f"{name} {n} concurrent: {res['start_error']}")
    points: dict[str, Any] = {}
    for n in plan.conc:
        points[str(n)] = {}
        for name in names:
            rounds = raw[n][name]
            node: dict[str, Any] = {
                k: summary([x.get(k) if x else None for x in rounds], 3 if k == "ramp_s" else 1)
                for k in (*keys, *extra[name])
            }
            node["rounds"] = len(rounds)
            node["incomplete"] = sum(1 for x in rounds if x and x.get("stopped"))
            node["stopped"] = [x["stopped"] for x in rounds if x and x.get("stopped")]
            node["start_errors"] = [x["start_error"] for x in rounds if x and x.get("start_error")]
            points[str(n)][name] = node
    return {
        "points": points,
        "sleep_s": sleep_s,
        "ramp_timeout_s": plan.ramp_timeout,
        "cpu_window_s": plan.cpu_window,
        "settle_s": conc.SETTLE,
        "tsp_max_jobs": max(
            (
                x["jobs"]
                for n in plan.conc
                for x in raw[n].get("task-spooler", [])
                if x and "refused_after" in x
            ),
            default=None,
        ),
    }


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """The quick mode's one-line JSON (medians; null where not measured)."""

    def med(*path: str) -> float | None:
        node: Any = res
        for key in path:
            if not isinstance(node, dict) or node.get(key) is None:
                return None
            node = node[key]
        return node.get("median") if isinstance(node, dict) else None

    out = {
        "drain_jobs_per_s": med("drain", "queuectl"),
        "spawn_ceiling_per_s": med("drain", "ceiling_python"),
        "xargs_ceiling_per_s": med("drain", "ceiling_xargs"),
        "drain_ratio_to_ceiling": med("drain", "ratio_to_ceiling"),
        "best_peer_drain_jobs_per_s": med("drain", "best_peer"),
        "drain_ratio_to_best_peer": med("drain", "ratio_to_best_peer"),
        "drain_ratio_cgroup_to_process_groups": med("drain", "ratio_cgroup_to_process_groups"),
        "batch_enqueue_jobs_per_s": med("batch", "queuectl"),
        "cli_enqueue_ms": med("cli", "queuectl"),
        "python_startup_ms": med("cli", "python"),
        "cli_ratio_to_python": med("cli", "ratio_to_python"),
        "pickup_p50_ms": med("pickup", "p50_ms", "queuectl"),
        "pickup_p95_ms": med("pickup", "p95_ms", "queuectl"),
        "idle_rss_mb": med("rss", "rss_mb"),
        "claim_ratio_1m_to_100": med("claim", "ratio"),
        "drain_10k_to_1k_cost_ratio": med("scale", "ratio"),
    }
    for p in PEERS:
        out[f"{p.replace('-', '_')}_drain_jobs_per_s"] = med("drain", p)
    out["tsp_drain_jobs_per_s"] = med("drain", "task-spooler")
    out["tsp_pickup_p50_ms"] = med("pickup", "p50_ms", "task-spooler")
    out["conc1000_pss_mb"] = med("concurrency", "points", "1000", "queuectl", "pss_mb")
    out["conc1000_ramp_s"] = med("concurrency", "points", "1000", "queuectl", "ramp_s")
    out["conc1000_running"] = med("concurrency", "points", "1000", "queuectl", "running")
    return out


def http_section(plan: Plan, errors: list[str]) -> dict[str, Any] | None:
    """The HTTP gateway's enqueue rate and status latency beside the socket client's."""
    from bench import http  # needs the http extra; only this section imports it

    jobs = 1000 if plan.quick else 2000
    r = _try(errors, "http", lambda: http.measure(jobs, plan.reps, plan.cli_samples))
    if r is None:
        return None
    return {
        "jobs": r["jobs"],
        "connections": r["connections"],
        "http_enqueue_jobs_per_s": summary(r["http_jobs_per_s"], 1),
        "socket_enqueue_jobs_per_s": summary(r["socket_jobs_per_s"], 1),
        "ratio_http_to_socket": summary(r["ratio"]),
        "status_ms": r["status"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a shorter run for tracking; the last line is one JSON object",
    )
    ap.add_argument(
        "--reps",
        type=int,
        help="rounds per measurement (default 5, the slow sections and concurrency 3; quick 3, "
        "concurrency 1)",
    )
    ap.add_argument("--no-install", action="store_true", help="use only the peers installed")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--report", metavar="RESULTS_JSON", help="only rewrite the report from saved results"
    )
    ap.add_argument(
        "--only",
        default="drain,batch,cli,pickup,claim,rss,scale,concurrency",
        help="comma-separated sections to run (default: all of %(default)s; "
        "`http` measures the HTTP gateway, on request only)",
    )
    ap.add_argument(
        "--conc",
        metavar="N,N,...",
        help="jobs at once for the concurrency section (default 10,100,1000; quick 1000)",
    )
    ap.add_argument(
        "--ramp-timeout",
        type=float,
        default=conc.RAMP_TIMEOUT,
        help="seconds to wait for N jobs to be running before reporting how many were "
        "(default %(default)g)",
    )
    args = ap.parse_args(argv)
    if args.report:
        from bench import report

        report.write(json.loads(Path(args.report).read_text()), Path(args.report))
        return 0
    try:
        points = tuple(int(x) for x in args.conc.split(",")) if args.conc else None
    except ValueError:
        ap.error("--conc takes job counts separated by commas, e.g. 10,100")
    if points and any(not 1 <= x <= 1024 for x in points):
        ap.error("--conc: each count must be 1 to 1024 (queuectl's worker limit)")
    plan = Plan(args.quick, args.reps, points, args.ramp_timeout)
    sections = {"concurrency" if x == "conc" else x for x in args.only.split(",")}
    if plan.quick:
        sections -= {"claim", "scale"}
    started = time.time()
    res: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "reps": plan.reps,
    }
    if not (plan.quick or args.no_install):
        res["install"] = peers.install()
    available = peers.installed()
    res["peers"] = {"installed": available, "versions": peers.versions()}
    errors: list[str] = []
    try:
        if "drain" in sections:
            res["drain"] = drain_section(plan, available, errors)
        if "batch" in sections:
            res["batch"] = batch_section(plan, available, errors)
        if "cli" in sections:
            res["cli"] = cli_section(plan, available, errors)
        if "pickup" in sections:
            res["pickup"] = pickup_section(plan, available, errors)
        if "rss" in sections:
            res["rss"] = rss_section(plan, errors)
        if "scale" in sections:
            res["scale"] = scale_section(plan, errors)
        if "claim" in sections:
            res["claim"] = claim_section(plan, errors)
        if "concurrency" in sections:
            res["concurrency"] = concurrency_section(plan, available, errors)
        if "http" in sections:
            res["http"] = http_section(plan, errors)
    finally:
        cleanup()
    res["errors"] = errors
    res["seconds"] = round(time.time() - started, 1)
    res["headline"] = headline(res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    path = RESULTS / f"{res['mode']}-{stamp}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"latest-{res['mode']}.json").write_text(json.dumps(res, indent=2) + "\n")
    log(f"results saved to {path}")
    if not plan.quick and not args.no_report:
        from bench import report

        report.write(res, Path(path))
    print(json.dumps(res["headline"]))
    return 0
