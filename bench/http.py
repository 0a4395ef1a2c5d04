"""The HTTP gateway beside its own baseline, the socket client, in the same run.

``enqueue``: N jobs over 8 concurrent connections, each a keep-alive HTTP/1.1
connection (``POST /enqueue``) or a socket ``Client`` (``enqueue``), one request at a
time per connection; jobs per second of each, and their ratio. ``status``: sequential
``GET /status`` latency (p50, p95) beside the socket client's ``status`` call.
No workers run: this measures the request path, not the jobs.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.core import percentile, stop_process, wait_for
from bench.qc import BIN, Daemon, daemon

CONNECTIONS = 8
PORT = 18639


@contextmanager
def gateway(d: Daemon) -> Iterator[str]:
    """``queuectl http`` for daemon ``d``; yields its host:port."""
    log = open(d.home / "http.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "queuectl"), "http", "--listen", f"127.0.0.1:{PORT}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=d.env,
        start_new_session=True,
    )

    def answers() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    try:
        if not wait_for(answers, timeout=30.0, interval=0.02):
            raise RuntimeError(f"queuectl http did not answer; see {d.home / 'http.log'}")
        yield f"127.0.0.1:{PORT}"
    finally:
        stop_process(proc)
        log.close()


def _parallel(n: int, one_connection: Callable[[int, int], None]) -> float:
    """Jobs per second for ``n`` jobs split over CONNECTIONS threads."""
    share = [n // CONNECTIONS + (1 if i < n % CONNECTIONS else 0) for i in range(CONNECTIONS)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            one_connection(i, share[i])
        except BaseException as exc:  # reported after the others finish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CONNECTIONS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return n / elapsed


def http_enqueue(address: str, n: int, tag: str) -> float:
    host, port = address.split(":")

    def one(i: int, count: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {"Content-Type": "application/json"}
        for k in range(count):
            body = json.dumps({"id": f"{tag}-h{i}-{k}", "command": "true"})
            conn.request("POST", "/enqueue", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise RuntimeError(f"POST /enqueue answered {resp.status}")
        conn.close()

    return _parallel(n, one)


def socket_enqueue(d: Daemon, n: int, tag: str) -> float:
    def one(i: int, count: int) -> None:
        with d.client() as client:
            for k in range(count):
                client.enqueue("true", id=f"{tag}-s{i}-{k}")

    return _parallel(n, one)


def _latencies(call: Callable[[], None], samples: int) -> dict[str, float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)}


def status_latency(d: Daemon, address: str, samples: int) -> dict[str, dict[str, float]]:
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def over_http() -> None:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        resp.read()

    with d.client() as client:
        out = {
            "http": _latencies(over_http, samples),
            "socket": _latencies(client.status, samples),
        }
    conn.close()
    return out


def measure(jobs: int, rounds: int, samples: int) -> dict[str, Any]:
    """``rounds`` interleaved rounds of both enqueue paths, then the status latencies."""
    http_rates: list[float] = []
    socket_rates: list[float] = []
    with daemon() as d, gateway(d) as address:
        http_enqueue(address, CONNECTIONS * 10, "warm")  # first connections, imports
        for r in range(rounds):
            socket_rates.append(socket_enqueue(d, jobs, f"r{r}"))
            http_rates.append(http_enqueue(address, jobs, f"r{r}"))
        status = status_latency(d, address, samples)
    return {
        "jobs": jobs,
        "connections": CONNECTIONS,
        "http_jobs_per_s": http_rates,
        "socket_jobs_per_s": socket_rates,
        "ratio": [h / s for h, s in zip(http_rates, socket_rates, strict=True)],
        "status": status,
    }
