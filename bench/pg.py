"""PostgreSQL lines of the benchmark: several daemons on one store, beside SQLite.

``python -m bench.pg [--rounds N] [--quick] [--url URL]`` measures, round by round
(every configuration once per round, the order rotated each round, ratios taken within
a round so that the drift of a shared machine cancels out):

* ``drain``: jobs of ``sleep 0.05`` drained by 1, 2 and 3 daemons sharing one
  PostgreSQL store (separate homes, sockets and node ids; a fresh schema each time),
  4 workers each, beside the same drain by one daemon on SQLite. The slow job makes the
  hosts' workers, not the 2 CPUs, the limit: the ideal is workers / 0.05 s. Every job
  appends its id to a file, so a job run twice or never is seen.
* ``pickup``: daemon A without workers and daemon B with workers on one store; an
  enqueue through A until the job's own first command runs on B (LISTEN/NOTIFY), beside
  an enqueue through B itself, sample by sample in the same pair of daemons; and one
  SQLite daemon's pickup as the single-host reference.
* ``claim``: :meth:`PostgresStore.claim_due` of one job at a time (inside a transaction
  rolled back, as :func:`bench.qc.claim_cost` does for SQLite) with 100 and with
  1,000,000 jobs in the store; and the plans of the claim queries (EXPLAIN ANALYZE).

Results go to ``bench/results/pg-<time>.json``; stdout gets a Markdown section for
``docs/postgres.md``. PostgreSQL must answer at ``--url`` (default
``$QUEUECTL_BENCH_PG_URL``, ``$QUEUECTL_TEST_PG_URL`` or the local test database).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import qc
from bench.core import RESULTS, cleanup, log, machine, percentile, ratio_samples, summary, temp_dir
from queuectl.client import Client
from queuectld.store.postgres import PostgresStore, Q

DEFAULT_URL = (
    os.environ.get("QUEUECTL_BENCH_PG_URL")
    or os.environ.get("QUEUECTL_TEST_PG_URL")
    or "postgresql://postgres@127.0.0.1:5432/test"
)
SLEEP = 0.05  # seconds per drain job: the workers, not the CPUs, set the pace
QUEUE = "default"


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one run."""

    rounds: int
    drain_jobs: int
    workers: int  # per daemon
    daemons: tuple[int, ...]
    pickup_samples: int  # per kind (across hosts, same host) and round
    claim_small: int
    claim_big: int
    claim_txns: int  # rolled-back transactions per claim measurement
    claim_per_txn: int

    @classmethod
    def make(cls, quick: bool, rounds: int | None) -> Plan:
        return cls(
            rounds=rounds or (1 if quick else 3),
            drain_jobs=300 if quick else 600,
            workers=4,
            daemons=(1, 2, 3),
            pickup_samples=10 if quick else 30,
            claim_small=100,
            claim_big=100_000 if quick else 1_000_000,
            claim_txns=5 if quick else 20,
            claim_per_txn=50,
        )


# -- the PostgreSQL server ------------------------------------------------------------


def require_pg(url: str) -> None:
    """Stop with one sentence when PostgreSQL does not answer (no figure without it)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise SystemExit(f"bench.pg: PostgreSQL does not answer at {url}: {exc}") from None


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A schema name nothing else uses (the store creates it), dropped afterwards."""
    name = f"qbench_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def pg_env(url: str, schema: str, node: str) -> dict[str, str]:
    """A daemon's settings for one host of the cluster."""
    return {
        "QUEUECTLD_STORE_URL": url,
        "QUEUECTLD_STORE_SCHEMA": schema,
        "QUEUECTLD_NODE_ID": node,
    }


def attempts_by_node(url: str, schema: str) -> dict[str, int]:
    """How many attempts each daemon (node id) started, from the store itself."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT lease_owner, count(*) FROM {} GROUP BY lease_owner").format(
                sql.Identifier(schema, "attempts")
            )
        ).fetchall()
    return {str(owner): int(n) for owner, n in rows}


# -- drain -------------------------------------------------------------------------------


def _enqueue(client: Client, command: str, n: int) -> None:
    spec = {"command": command}
    for start in range(0, n, 10_000):
        client.enqueue_batch([spec] * min(10_000, n - start))


def daemon_problems(homes: list[Path]) -> list[str]:
    """The warnings and errors the daemons logged (``queuectld.log``, JSON lines), each as
    ``home-name: event {fields}``: a cluster that works quietly logs none in a drain."""
    out: list[str] = []
    for home in homes:
        path = home / "queuectld.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                out.append(f"{home.name}: {line[:300]}")  # a traceback, not a log line
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                rest = {k: v for k, v in entry.items() if k not in ("timestamp", "level", "event")}
                out.append(f"{home.name}: {entry.get('level')} {entry.get('event')} {rest}"[:300])
    return out


def drain_command(ran: Path) -> str:
    """A drain job: sleep, then append its id to ``ran`` (a job run twice shows twice)."""
    return f'sleep {SLEEP}; echo "$QUEUECTL_JOB_ID" >> {ran}'


def spawn_ceiling(plan: Plan, daemons: int) -> dict[str, Any]:
    """The same jobs with no queue at all: as many threads as the daemons' workers, each
    running the drain's command with ``sh -c`` one after another. What this machine
    gives when starting the processes is all there is to do (no log file per job)."""
    n, slots = plan.drain_jobs, daemons * plan.workers
    with temp_dir("pg-ceiling") as work:
        ran = work / "ran.txt"
        command = drain_command(ran)
        base = dict(os.environ)
        numbers = itertools.count(1)  # next() on a count is atomic under the GIL
        failures: list[int] = []

        def loop() -> None:
            while (i := next(numbers)) <= n:
                env = {**base, "QUEUECTL_JOB_ID": str(i)}
                if subprocess.run(["/bin/sh", "-c", command], env=env).returncode:
                    failures.append(i)

        threads = [threading.Thread(target=loop) for _ in range(slots)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        seen = Counter(ran.read_text().split())
    return {
        "jobs_per_s": n / elapsed,
        "seconds": elapsed,
        "completed": n - len(failures),
        "failed": len(failures),
        "per_node": {},
        "ran_twice": sorted(i for i, k in seen.items() if k > 1),
        "never_ran": n - len(seen),
    }


def drain(plan: Plan, url: str | None, daemons: int) -> dict[str, Any]:
    """One drain of ``plan.drain_jobs`` slow jobs by ``daemons`` daemons (PostgreSQL when
    ``url`` is given, else one SQLite daemon); jobs/s and what ran where.

    The workers are started and idle before the clock starts, the queue paused: the
    clock runs from ``queue resume`` (through the first daemon; the others learn of it
    through the store's wake-ups) until the store counts every job finished.
    """
    n = plan.drain_jobs
    with temp_dir("pg-drain") as work, contextlib.ExitStack() as stack:
        ran = work / "ran.txt"
        command = drain_command(ran)
        schema = stack.enter_context(fresh_schema(url)) if url else None
        nodes = [f"bench-{chr(ord('a') + i)}" for i in range(daemons)]
        envs = [pg_env(url, schema, node) if url and schema else {} for node in nodes]
        ds = [stack.enter_context(qc.daemon(plan.workers, env)) for env in envs]
        clients = [stack.enter_context(d.client()) for d in ds]
        first = clients[0]
        first.pause_queue(QUEUE)
        for d, c in zip(ds, clients, strict=True):
            d.wait_workers(c, plan.workers)
        _enqueue(first, command, n)
        if qc.counts(first)["pending"] != n:
            raise RuntimeError(f"jobs were not all pending before the drain: {qc.counts(first)}")
        # Far beyond any plausible drain: a stuck cluster fails the round, not the run.
        deadline = time.monotonic() + 60.0 + 20 * n * SLEEP / plan.workers
        t0 = time.perf_counter()
        first.resume_queue(QUEUE)
        while True:
            done = qc.counts(first)
            if done["completed"] + done["failed"] + done["dead"] >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the drain did not finish: {done}")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        per_node = attempts_by_node(url, schema) if url and schema else {"sqlite": n}
        ids = ran.read_text().split() if ran.exists() else []
    seen = Counter(ids)
    problems = daemon_problems([d.home for d in ds])  # read once they stopped
    return {
        "jobs_per_s": n / elapsed,
        "seconds": elapsed,
        "completed": done["completed"],
        "failed": done["failed"] + done["dead"],
        "runs_recorded": sum(per_node.values()),
        "per_node": per_node,
        "ran_twice": sorted(i for i, k in seen.items() if k > 1),
        "never_ran": n - len(seen),
        "daemon_problems": problems,
    }


def drain_section(plan: Plan, url: str, errors: list[str]) -> dict[str, Any]:
    """SQLite with one daemon, PostgreSQL with 1, 2 and 3, and the machine's ceiling for
    each worker count, the order rotated by round."""
    configs: list[tuple[str, Callable[[], dict[str, Any]], int]] = [
        ("sqlite_1", functools.partial(drain, plan, None, 1), 1)
    ]
    configs += [(f"pg_{k}", functools.partial(drain, plan, url, k), k) for k in plan.daemons]
    configs += [
        (f"ceiling_{k}", functools.partial(spawn_ceiling, plan, k), k) for k in plan.daemons
    ]
    rates: dict[str, list[float | None]] = {name: [] for name, _, _ in configs}
    details: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
    for r in range(plan.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for name, runner, k in order:
            log(f"drain round {r + 1}/{plan.rounds}: {name} ({plan.drain_jobs} jobs)")
            res = _try(errors, f"drain {name}", runner)
            rates[name].append(res["jobs_per_s"] if res else None)
            if res:
                details[name].append(res)
                runs = res["runs_recorded"] if name.startswith("pg") else plan.drain_jobs
                if (
                    res["ran_twice"]
                    or res["never_ran"]
                    or res["completed"] != plan.drain_jobs
                    or runs != plan.drain_jobs
                ):
                    errors.append(
                        f"drain {name} round {r + 1}: {res['completed']} completed of "
                        f"{plan.drain_jobs}, ran twice {res['ran_twice'][:10]}, never ran "
                        f"{res['never_ran']}, attempts recorded {runs}"
                    )
                if res.get("daemon_problems"):
                    errors.append(
                        f"drain {name} round {r + 1}: the daemons logged "
                        f"{len(res['daemon_problems'])} warnings/errors, first: "
                        f"{res['daemon_problems'][0]}"
                    )
                if (
                    name.startswith("pg")
                    and k > 1
                    and len([v for v in res["per_node"].values() if v]) < k
                ):
                    errors.append(
                        f"drain {name} round {r + 1}: not every daemon worked: {res['per_node']}"
                    )
    out: dict[str, Any] = {
        "jobs": plan.drain_jobs,
        "sleep_s": SLEEP,
        "workers_per_daemon": plan.workers,
        "jobs_per_s": {name: summary(v, 1) for name, v in rates.items()},
        "ideal_jobs_per_s": {name: k * plan.workers / SLEEP for name, _, k in configs},
        "share_of_ideal": {
            name: summary([x / (k * plan.workers / SLEEP) for x in rates[name] if x is not None])
            for name, _, k in configs
        },
        "ratio_pg2_to_pg1": summary(ratio_samples(rates["pg_2"], rates["pg_1"])),
        "ratio_pg3_to_pg1": summary(ratio_samples(rates["pg_3"], rates["pg_1"])),
        "ratio_pg1_to_sqlite1": summary(ratio_samples(rates["pg_1"], rates["sqlite_1"])),
        # Each queue beside the machine running the same jobs with as many slots, no queue.
        "ratio_to_ceiling": {
            name: summary(ratio_samples(rates[name], rates[f"ceiling_{k}"]))
            for name, _, k in configs
            if not name.startswith("ceiling")
        },
        "rounds": details,
    }
    return out


# -- pickup -------------------------------------------------------------------------


def pickup_pair(plan: Plan, url: str, errors: list[str]) -> dict[str, list[float]]:
    """Milliseconds from an enqueue to the job's first command: through daemon A (no
    workers; the job runs on B) and through B itself, alternately, on one store. What
    the daemons logged as warnings or errors goes to ``errors``."""
    lat: dict[str, list[float]] = {"across": [], "same": [], "across_ack": [], "same_ack": []}
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(fresh_schema(url))
        a = stack.enter_context(qc.daemon(0, pg_env(url, schema, "bench-a")))
        b = stack.enter_context(qc.daemon(2, pg_env(url, schema, "bench-b")))
        ca, cb = stack.enter_context(a.client()), stack.enter_context(b.client())
        b.wait_workers(cb, 2)
        clock = qc.FifoClock(b.home)
        stack.callback(clock.close)
        via = {"across": ca, "same": cb}
        for i in range(plan.pickup_samples):
            kinds = ("across", "same") if i % 2 == 0 else ("same", "across")
            for kind in kinds:
                clock.arm()
                t0 = time.perf_counter()
                job = via[kind].enqueue_spec({"command": clock.command})
                acked = time.perf_counter()  # the enqueue is committed (part of the pickup)
                t1 = clock.wait(timeout=15.0)
                if t1 is None:
                    raise RuntimeError(f"pickup ({kind}): job {job['id']} did not start in 15 s")
                lat[kind].append((t1 - t0) * 1000)
                lat[f"{kind}_ack"].append((acked - t0) * 1000)
                # The job finishes and B's workers are idle again before the next sample.
                b.wait_workers(cb, 2, timeout=15.0)
                time.sleep(0.005)
        per_node = attempts_by_node(url, schema)
    problems = daemon_problems([a.home, b.home])
    if problems:
        errors.append(f"pickup: the daemons logged {len(problems)} warnings/errors: {problems[:3]}")
    if set(per_node) != {"bench-b"}:
        raise RuntimeError(f"pickup jobs ran elsewhere than on B: {per_node}")
    return lat


def _pcts(values: list[float], acks: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "max_ms": max(values),
        "ack_p50_ms": percentile(acks, 50),
    }


KEYS = ("p50_ms", "p95_ms", "max_ms", "ack_p50_ms")


def pickup_section(plan: Plan, url: str, errors: list[str]) -> dict[str, Any]:
    stats: dict[str, dict[str, list[float | None]]] = {
        kind: {k: [] for k in KEYS} for kind in ("across", "same", "sqlite")
    }
    for r in range(plan.rounds):
        log(f"pickup round {r + 1}/{plan.rounds}")
        res = _try(errors, "pickup across hosts", lambda: pickup_pair(plan, url, errors))
        sq = _try(errors, "pickup sqlite", lambda: qc.pickup(plan.pickup_samples))
        rows: dict[str, dict[str, float] | None] = {
            "across": _pcts(res["across"], res["across_ack"]) if res else None,
            "same": _pcts(res["same"], res["same_ack"]) if res else None,
            "sqlite": sq,  # bench.qc.pickup: p50 and p95 only
        }
        for kind, row in rows.items():
            for key in KEYS:
                stats[kind][key].append(row.get(key) if row else None)
        slow = [x for x in (res or {}).get("across", []) if x > 1000]
        if slow:
            errors.append(
                f"pickup round {r + 1}: {len(slow)} of {plan.pickup_samples} cross-host "
                f"pickups took over 1 s (max {max(slow):.0f} ms): the safety poll, not a wake-up"
            )
    return {
        "samples_per_round": plan.pickup_samples,
        **{kind: {k: summary(v) for k, v in s.items()} for kind, s in stats.items()},
        "ratio_across_to_same_p50": summary(
            ratio_samples(stats["across"]["p50_ms"], stats["same"]["p50_ms"])
        ),
        "ratio_across_to_sqlite_p50": summary(
            ratio_samples(stats["across"]["p50_ms"], stats["sqlite"]["p50_ms"])
        ),
    }


# -- claim cost --------------------------------------------------------------------------

CLAIM_QUEUES = qc.CLAIM_QUEUES
# The layout of bench.qc.build_store (SQLite): four queues, 21 priorities, one job in
# ten delayed by a day, so that the claim's index holds every part of its order. One
# statement: a million rows through add_jobs would take minutes and measure nothing here.
FILL = sql.SQL(
    """
    INSERT INTO {jobs} (id, command, state, queue, priority, created_at, updated_at, run_at)
    SELECT 'j' || i, 'true',
           CASE WHEN i %% 10 = 9 THEN 'waiting' ELSE 'pending' END,
           (%(queues)s::text[])[i %% 4 + 1],
           i %% 21 - 10, %(now)s, %(now)s,
           CASE WHEN i %% 10 = 9 THEN %(now)s + 86400 ELSE %(now)s END
    FROM generate_series(0, %(n)s - 1) AS i
    """
)


class _Rollback(Exception):
    """Raised inside a store transaction to roll it back."""


def build_pg_store(url: str, schema: str, jobs: int) -> float:
    """A store (schema) holding ``jobs`` jobs, vacuumed and analyzed as autovacuum leaves
    a table after a bulk insert; seconds spent."""
    t0 = time.perf_counter()
    store = PostgresStore(url, schema)
    store.open()  # creates the schema, its tables and indexes
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            FILL.format(jobs=sql.Identifier(schema, "jobs")),
            {"queues": list(CLAIM_QUEUES), "now": time.time(), "n": jobs},
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))
    return time.perf_counter() - t0


def _claim_txn(store: PostgresStore, per_txn: int) -> float:
    """Seconds for ``per_txn`` claims of one job in one transaction, then rolled back."""
    now = time.time()
    took = 0.0
    with contextlib.suppress(_Rollback), store.transaction():
        t0 = time.perf_counter()
        for _ in range(per_txn):
            if not store.claim_due("bench", 1, now, 10.0, 35.0):
                raise RuntimeError("no job left to claim")
        took = time.perf_counter() - t0
        raise _Rollback
    return took


def claim_costs(url: str, schemas: tuple[str, str], txns: int, per_txn: int) -> list[float]:
    """Microseconds per ``claim_due`` of one job in each of two stores: ``per_txn`` claims
    in each of ``txns`` transactions rolled back (the commit, the same at any size, is
    left out), the two stores' transactions alternating so that both see the same
    moments of a noisy machine; the median transaction of each. One transaction in each
    beforehand warms the connections and is not counted."""
    stores = [PostgresStore(url, schema) for schema in schemas]
    times: list[list[float]] = [[], []]
    try:
        for store in stores:
            store.open()
            _claim_txn(store, per_txn)
        for t in range(txns):
            for i in (0, 1) if t % 2 == 0 else (1, 0):
                times[i].append(_claim_txn(stores[i], per_txn))
    finally:
        for store in stores:
            store.close()
    return [statistics.median(x) / per_txn * 1e6 for x in times]


def explain_claims(url: str, schema: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the claim's queries (one queue's next ready jobs, and the
    one-queue claim), in a transaction rolled back; and whether they read jobs_ready."""
    store = PostgresStore(url, schema)
    store.open()
    plans: dict[str, list[str]] = {}
    now = time.time()
    queries: dict[str, dict[str, Any]] = {
        "ready_in_queue": {"queue": QUEUE, "limit": 1},
        "claim_from_queue": {
            "queue": QUEUE,
            "limit": 1,
            "now": now,
            "owner": "bench",
            "default_timeout": 10.0,
            "lease_margin": 35.0,
        },
    }
    try:
        with contextlib.suppress(_Rollback), store.transaction():
            for name, params in queries.items():
                rows = store.conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + Q[name], params
                ).fetchall()
                plans[name] = [str(row["QUERY PLAN"]) for row in rows]
            raise _Rollback
    finally:
        store.close()
    return {
        "plans": plans,
        "uses_jobs_ready": {n: any("jobs_ready" in line for line in p) for n, p in plans.items()},
    }


def claim_section(plan: Plan, url: str, errors: list[str]) -> dict[str, Any]:
    small: list[float | None] = []
    big: list[float | None] = []
    out: dict[str, Any] = {"jobs_small": plan.claim_small, "jobs_big": plan.claim_big}
    with fresh_schema(url) as s_small, fresh_schema(url) as s_big:
        log(f"building stores with {plan.claim_small} and {plan.claim_big:,} jobs")
        out["build_s_small"] = round(build_pg_store(url, s_small, plan.claim_small), 2)
        out["build_s_big"] = round(build_pg_store(url, s_big, plan.claim_big), 2)
        log(f"stores built in {out['build_s_small'] + out['build_s_big']:.0f} s")
        sizes = (plan.claim_txns, plan.claim_per_txn)
        for r in range(plan.rounds):
            log(f"claim round {r + 1}/{plan.rounds}")
            res = _try(errors, "claim", lambda: claim_costs(url, (s_small, s_big), *sizes))
            small.append(res[0] if res else None)
            big.append(res[1] if res else None)
        out["explain_big"] = _try(errors, "explain", lambda: explain_claims(url, s_big))
    out["us_per_claim_small"] = summary(small, 1)
    out["us_per_claim_big"] = summary(big, 1)
    out["ratio_big_to_small"] = summary(ratio_samples(big, small))
    out["transactions_per_round"] = plan.claim_txns
    out["claims_per_transaction"] = plan.claim_per_txn
    explained = out["explain_big"]
    if explained and not all(explained["uses_jobs_ready"].values()):
        errors.append(f"a claim query does not read jobs_ready: {explained['uses_jobs_ready']}")
    return out


# -- report ------------------------------------------------------------------------------


def _try(errors: list[str], what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        errors.append(f"{what}: {exc}")
        log(f"{what} failed: {exc}")
        return None


def _fig(node: dict[str, Any] | None, digits: int = 0, unit: str = "") -> str:
    """``median (min-max)``, or a dash where nothing was measured."""
    if not node:
        return "—"

    def f(x: float) -> str:
        return f"{x:,.{digits}f}{unit}"

    if node["n"] == 1:
        return f(node["median"])
    return f"{f(node['median'])} ({f(node['min'])}\u2013{f(node['max'])})"


def markdown(res: dict[str, Any]) -> str:
    """The section for docs/postgres.md: every figure a median with its min-max."""
    lines: list[str] = []
    m = res["machine"]
    lines += [
        f"Measured by `{res['command']}` on {res['started']}: {m.get('cpus')} CPUs "
        f"({m.get('cpu_model', 'unknown CPU')}), PostgreSQL {res.get('server_version', '?')} "
        f"on the same machine (load average {m.get('loadavg_at_start', ['?'])[0]} at the "
        f"start, {m.get('loadavg_at_end', ['?'])[0]} at the end: other work shared it); "
        f"{res['rounds']} round(s), each figure the median of the rounds with their min-max, "
        "ratios taken within each round.",
        "",
    ]
    d = res.get("drain")
    if d:
        lines += [
            f"**Drain**: {d['jobs']} jobs of `sleep {d['sleep_s']}` (then one `echo` into a "
            f"file, to count runs), {d['workers_per_daemon']} workers per daemon. The ceiling "
            "runs the same jobs with as many slots and no queue (threads starting `sh -c` one "
            "after another): what this machine gives; the ideal is workers ÷ 0.05 s.",
            "",
            "| store | daemons | jobs/s | ceiling jobs/s | ÷ ceiling | ideal jobs/s | ÷ ideal |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, label, k in [("sqlite_1", "SQLite", 1)] + [
            (f"pg_{k}", "PostgreSQL", k) for k in (1, 2, 3)
        ]:
            if name not in d["jobs_per_s"]:
                continue
            lines.append(
                f"| {label} | {k} | {_fig(d['jobs_per_s'][name])} | "
                f"{_fig(d['jobs_per_s'].get(f'ceiling_{k}'))} | "
                f"{_fig(d['ratio_to_ceiling'].get(name), 2)} | "
                f"{d['ideal_jobs_per_s'][name]:,.0f} | {_fig(d['share_of_ideal'][name], 2)} |"
            )
        lines += [
            "",
            f"Ratios: 2 ÷ 1 daemons {_fig(d['ratio_pg2_to_pg1'], 2)}, 3 ÷ 1 daemons "
            f"{_fig(d['ratio_pg3_to_pg1'], 2)} (ideal 2 and 3); PostgreSQL ÷ SQLite with one "
            f"daemon {_fig(d['ratio_pg1_to_sqlite1'], 2)}.",
        ]
        shares = []
        for k in (2, 3):
            for rnd in d["rounds"].get(f"pg_{k}", []):
                shares.append("/".join(str(v) for _, v in sorted(rnd["per_node"].items())))
        if shares:
            lines.append(f"Jobs per daemon (2 and 3 daemons, each round): {', '.join(shares)}.")
        bad = [e for e in res["errors"] if e.startswith("drain")]
        lines.append(
            "Every job ran exactly once: one line per run in a file, one attempt per job in "
            "the store."
            if not bad
            else "**Anomalies**: " + "; ".join(bad)
        )
        lines.append("")
    p = res.get("pickup")
    if p:
        lines += [
            f"**Pickup**: from sending an enqueue to the job's first command "
            f"({p['samples_per_round']} samples of each kind per round, alternating).",
            "",
            "| enqueued through | job runs on | p50 ms | p95 ms | max ms | enqueue ack p50 ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for kind, via, on in (
            ("across", "A (no workers)", "B, another daemon on the store"),
            ("same", "B", "B itself (PostgreSQL)"),
            ("sqlite", "one daemon on SQLite", "itself"),
        ):
            row = p[kind]
            lines.append(
                f"| {via} | {on} | "
                + " | ".join(_fig(row[k], 1) for k in ("p50_ms", "p95_ms", "max_ms", "ack_p50_ms"))
                + " |"
            )
        lines += [
            "",
            f"Ratio across hosts ÷ same daemon (p50): {_fig(p['ratio_across_to_same_p50'], 2)}; "
            f"across hosts ÷ SQLite (p50): {_fig(p['ratio_across_to_sqlite_p50'], 2)}.",
            "",
        ]
    c = res.get("claim")
    if c:
        lines += [
            f"**Claim cost**: `claim_due` of one job on the store directly, "
            f"{c['claims_per_transaction']} claims per transaction, rolled back; per round "
            f"{c['transactions_per_round']} transactions in each store, alternating between "
            "them, and the median transaction taken; the jobs in four queues and 21 "
            "priorities, one in ten delayed by a day (the layout of the SQLite claim "
            "benchmark), the table vacuumed and analyzed.",
            "",
            "| jobs in the store | µs per claim |",
            "|---:|---:|",
            f"| {c['jobs_small']:,} | {_fig(c['us_per_claim_small'])} |",
            f"| {c['jobs_big']:,} | {_fig(c['us_per_claim_big'])} |",
            "",
            f"Ratio {c['jobs_big']:,} ÷ {c['jobs_small']:,}: {_fig(c['ratio_big_to_small'], 2)}.",
        ]
        ex = c.get("explain_big")
        if ex:
            lines += [
                "",
                f"Plans at {c['jobs_big']:,} jobs (`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)`):",
                "",
                "```",
            ]
            for name, plan_lines in ex["plans"].items():
                lines += [f"-- {name}", *plan_lines, ""]
            lines[-1] = "```"
        lines.append("")
    if res["errors"]:
        lines += ["Errors and anomalies:", "", *[f"- {e}" for e in res["errors"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pg", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    ap.add_argument(
        "--quick", action="store_true", help="smaller: 300 jobs, 10 pickups, 100,000-job claims"
    )
    ap.add_argument("--jobs", type=int, help="jobs per drain (default 600; quick 300)")
    ap.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL (default %(default)s)")
    ap.add_argument(
        "--only", default="drain,pickup,claim", help="sections to run (default %(default)s)"
    )
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        ap.error("--jobs must be at least 1")
    plan = Plan.make(args.quick, args.rounds)
    if args.jobs:
        plan = dataclasses.replace(plan, drain_jobs=args.jobs)
    sections = set(args.only.split(","))
    if sections - {"drain", "pickup", "claim"}:
        ap.error(f"--only: unknown sections {sorted(sections - {'drain', 'pickup', 'claim'})}")
    require_pg(args.url)
    with psycopg.connect(args.url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    started = time.time()
    res: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench.pg " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "server_version": row[0] if row else None,
        "rounds": plan.rounds,
        "plan": plan.__dict__,
    }
    errors: list[str] = []
    try:
        # A section that fails outright leaves the others' figures (and its error) saved.
        if "drain" in sections:
            res["drain"] = _try(errors, "drain", lambda: drain_section(plan, args.url, errors))
        if "pickup" in sections:
            res["pickup"] = _try(errors, "pickup", lambda: pickup_section(plan, args.url, errors))
        if "claim" in sections:
            res["claim"] = _try(errors, "claim", lambda: claim_section(plan, args.url, errors))
    finally:
        cleanup()
    res["errors"] = errors
    res["seconds"] = round(time.time() - started, 1)
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    path = RESULTS / f"pg-{stamp}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "latest-pg.json").write_text(json.dumps(res, indent=2) + "\n")
    log(f"results saved to {path}")
    print(markdown(res))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
