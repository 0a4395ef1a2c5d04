"""Prometheus metrics with ``prometheus_client``: read from the daemon at each scrape,
counted from the event feed in between.

Gauges (jobs by state, workers, daemon up and start time, the oldest pending job)
come from one ``metrics`` and one ``list_jobs`` call per scrape, so they are the
daemon's own numbers. Counters and histograms (jobs enqueued/completed/failed/dead,
attempt duration, queue wait) are observed by this gateway from the daemon's event
stream since the gateway started: Prometheus' ``rate()`` and ``increase()`` handle
their reset when the gateway restarts, as for any process-local counter.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queuectl.errors import QueuectlError
from queuectl.http.upstream import Upstream
from queuectl.protocol import JobState, SortKey

# Attempt run times and queue waits of shell jobs: from a fraction of a second to hours.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
# Jobs whose start (or due time) is remembered to pair with their end (or start).
MAX_TRACKED = 100_000


class _Bounded(OrderedDict[Any, float]):
    """A map that forgets its oldest entries past ``MAX_TRACKED`` (jobs we never see end)."""

    def __setitem__(self, key: Any, value: float) -> None:
        super().__setitem__(key, value)
        if len(self) > MAX_TRACKED:
            self.popitem(last=False)


class EventMetrics:
    """Counters and histograms fed by the daemon's job events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.enqueued = Counter(
            "queuectl_jobs_enqueued", "Jobs enqueued (or sent back from the DLQ)", registry=registry
        )
        self.completed = Counter(
            "queuectl_jobs_completed", "Jobs that completed", registry=registry
        )
        self.failed = Counter(
            "queuectl_jobs_failed", "Attempts that failed and will be retried", registry=registry
        )
        self.dead = Counter("queuectl_jobs_dead", "Jobs moved to the DLQ", registry=registry)
        self.duration = Histogram(
            "queuectl_attempt_duration_seconds",
            "Run time of finished attempts",
            buckets=BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "queuectl_queue_wait_seconds",
            "From enqueue (or the retry's due time) to the attempt's start",
            buckets=BUCKETS,
            registry=registry,
        )
        self._lock = threading.Lock()
        self._started = _Bounded()  # (id, attempt) -> start time
        self._due = _Bounded()  # id -> when it became runnable

    def observe(self, event: dict[str, Any]) -> None:
        """Count one event of the feed (called in the feed's thread)."""
        kind, job, at = event.get("type"), event.get("id"), event.get("time")
        if not isinstance(at, int | float):
            return
        with self._lock:
            if kind == "enqueued":
                self.enqueued.inc()
                self._due[job] = at
            elif kind == "started":
                due = self._due.pop(job, None)
                if due is not None:
                    self.wait.observe(max(0.0, at - due))
                self._started[(job, event.get("attempt"))] = at
            elif kind in (JobState.COMPLETED, JobState.FAILED, JobState.DEAD):
                began = self._started.pop((job, event.get("attempt")), None)
                if began is not None:
                    self.duration.observe(max(0.0, at - began))
                if kind == JobState.COMPLETED:
                    self.completed.inc()
                elif kind == JobState.DEAD:
                    self.dead.inc()
                else:
                    self.failed.inc()
                    retry_at = event.get("retry_at")
                    if isinstance(retry_at, int | float):
                        self._due[job] = retry_at


class DaemonCollector(Collector):
    """Gauges read from the daemon at scrape time; ``queuectl_up`` 0 when it is unreachable."""

    def __init__(self, upstream: Upstream, feed_connected: Callable[[], bool]) -> None:
        self._upstream = upstream
        self._feed_connected = feed_connected

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape; keeps registration from calling the daemon

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("queuectl_up", "1 if the gateway reached queuectld")
        feed = GaugeMetricFamily(
            "queuectl_event_feed_connected", "1 while the gateway follows the daemon's events"
        )
        feed.add_metric([], 1.0 if self._feed_connected() else 0.0)
        try:
            m = self._upstream.call(lambda c: c.metrics())
            queues = self._upstream.call(lambda c: c.queues())
            pending, _ = self._upstream.call(
                lambda c: c.list_jobs(JobState.PENDING, 1, 0, sort=SortKey.RUN_AT)
            )
        except QueuectlError:
            up.add_metric([], 0.0)
            yield up
            yield feed
            return
        up.add_metric([], 1.0)
        yield up
        yield feed
        jobs = GaugeMetricFamily(
            "queuectl_jobs", "Jobs by queue and state", labels=["queue", "state"]
        )
        paused = GaugeMetricFamily(
            "queuectl_queue_paused", "1 while a queue starts nothing", labels=["queue"]
        )
        for queue in queues:
            for state in JobState:
                jobs.add_metric([queue["name"], state.value], queue["counts"].get(state, 0))
            paused.add_metric([queue["name"]], 1.0 if queue["paused"] else 0.0)
        yield jobs
        yield paused
        for key in ("desired", "running", "busy"):
            gauge = GaugeMetricFamily(f"queuectl_workers_{key}", f"Workers {key}")
            gauge.add_metric([], m["workers"][key])
            yield gauge
        start = GaugeMetricFamily(
            "queuectl_daemon_start_time_seconds", "When queuectld started (Unix time)"
        )
        start.add_metric([], time.time() - float(m["uptime_seconds"]))
        yield start
        attempts = CounterMetricFamily(
            "queuectl_attempts", "Finished attempts by outcome (from the store)", labels=["outcome"]
        )
        for key, value in m["attempts"].items():
            if key.startswith("attempts_"):
                attempts.add_metric([key.removeprefix("attempts_")], value)
        yield attempts
        oldest = GaugeMetricFamily(
            "queuectl_oldest_pending_job_timestamp_seconds",
            "When the longest-due pending job became due (Unix time); absent with none pending",
        )
        if pending:
            oldest.add_metric([], float(pending[0]["run_at"]))
        yield oldest


def registry_for(
    upstream: Upstream, feed_connected: Callable[[], bool]
) -> tuple[CollectorRegistry, EventMetrics]:
    """A registry of its own (not the process-global one) with both kinds of metric."""
    # The `_created` series double every counter for little use; Prometheus does not need them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(upstream, feed_connected))
    return registry, EventMetrics(registry)
