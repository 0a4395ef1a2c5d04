"""Named queues' limits as a pure policy: how many jobs each queue may start now.

A queue may be *paused* (starts nothing), have a *concurrency* limit (at most N of its
jobs ``processing`` at once, across every daemon sharing the store) and a *rate* limit:
a token bucket holding at most ``rate_count`` tokens, refilled at ``rate_count`` per
``rate_period`` seconds, one token spent per start. The store keeps the settings and
the bucket; this module only computes, so that both backends claim alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from queuectl.protocol import RATE_PERIODS, JobState, QueueView, parse_rate

_UNIT_OF_PERIOD = {period: unit for unit, period in RATE_PERIODS.items()}


@dataclass(frozen=True)
class QueueLimits:
    """One queue's settings and the state of its rate limit's token bucket."""

    name: str
    concurrency: int | None = None
    rate_count: int | None = None
    rate_period: float | None = None
    paused: bool = False
    tokens: float | None = None  # None: a full bucket
    tokens_at: float | None = None

    @property
    def limited(self) -> bool:
        """True when the queue may start fewer jobs than there are free slots."""
        return self.paused or self.concurrency is not None or self.rate_count is not None

    @property
    def rate(self) -> str | None:
        """``10/s`` as the user wrote it (None without a rate limit)."""
        if self.rate_count is None or self.rate_period is None:
            return None
        return f"{self.rate_count}/{_UNIT_OF_PERIOD.get(self.rate_period, 's')}"

    def tokens_now(self, now: float) -> float:
        """The bucket's tokens at ``now`` (``inf`` without a rate limit)."""
        if self.rate_count is None or self.rate_period is None:
            return math.inf
        if self.tokens is None or self.tokens_at is None:
            return float(self.rate_count)
        refill = max(0.0, now - self.tokens_at) * self.rate_count / self.rate_period
        return min(float(self.rate_count), self.tokens + refill)

    def next_token_at(self, now: float) -> float | None:
        """When the bucket next holds a whole token, if it holds none now."""
        tokens = self.tokens_now(now)
        if tokens >= 1 or self.rate_count is None or self.rate_period is None:
            return None
        return now + (1.0 - tokens) * self.rate_period / self.rate_count

    def changed(
        self, concurrency: int | None, rate: str | None, paused: bool | None
    ) -> QueueLimits:
        """These settings with a `queue set`'s changes: ``None`` keeps a value;
        ``concurrency`` 0 and ``rate`` ``""`` remove a limit."""
        rate_count, rate_period = self.rate_count, self.rate_period
        if rate is not None:
            rate_count, rate_period = parse_rate(rate) if rate else (None, None)
        if concurrency is None:
            concurrency = self.concurrency
        return QueueLimits(
            self.name,
            concurrency=concurrency or None,
            rate_count=rate_count,
            rate_period=rate_period,
            paused=self.paused if paused is None else paused,
        )

    def view(self, counts: Mapping[JobState, int]) -> QueueView:
        return QueueView(
            name=self.name,
            counts={state.value: counts.get(state, 0) for state in JobState},
            concurrency=self.concurrency,
            rate=self.rate,
            paused=self.paused,
        )


def allowances(
    limits: Mapping[str, QueueLimits],
    counts: Mapping[str, Mapping[JobState, int]],
    want: int,
    now: float,
) -> dict[str, int]:
    """How many ready jobs each queue may start now, for ``want`` free slots.

    ``counts`` gives each queue's jobs by state (``pending`` ready ones, ``processing``
    running ones). A queue missing from ``limits`` has no limits.
    """
    out: dict[str, int] = {}
    for name, by_state in counts.items():
        ready = by_state.get(JobState.PENDING, 0)
        if ready <= 0:
            continue
        allowed = min(want, ready)
        queue = limits.get(name)
        if queue is not None:
            if queue.paused:
                continue
            if queue.concurrency is not None:
                allowed = min(allowed, queue.concurrency - by_state.get(JobState.PROCESSING, 0))
            tokens = queue.tokens_now(now)
            if tokens != math.inf:
                allowed = min(allowed, int(tokens))
        if allowed > 0:
            out[name] = allowed
    return out


def next_token_at(
    limits: Mapping[str, QueueLimits], counts: Mapping[str, Mapping[JobState, int]], now: float
) -> float | None:
    """The earliest time a rate-limited queue with ready jobs gets a token back."""
    times = [
        at
        for name, queue in limits.items()
        if not queue.paused
        and counts.get(name, {}).get(JobState.PENDING, 0) > 0
        and (at := queue.next_token_at(now)) is not None
    ]
    return min(times, default=None)
