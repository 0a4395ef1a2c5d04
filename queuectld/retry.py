"""The retry policy: pure functions from an attempt's outcome to the job's next state."""

from __future__ import annotations

from dataclasses import dataclass

from queuectl.protocol import JobState, Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """The settings that decide what happens after an attempt."""

    max_retries: int = 3
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    max_interruptions: int = 5


@dataclass(frozen=True)
class NextStep:
    """Where a job goes after an attempt, and when it may run again."""

    state: JobState
    attempts: int
    interruptions: int
    run_at: float
    reason: str | None


def backoff_delay(base: float, attempts: int, cap: float) -> float:
    """Seconds to wait before the next try: ``base ** attempts``, at most ``cap``."""
    if attempts <= 0:
        return 0.0
    try:
        return float(min(cap, base**attempts))
    except OverflowError:
        return cap


def next_step(
    outcome: Outcome,
    attempts: int,
    interruptions: int,
    max_retries: int,
    policy: RetryPolicy,
    now: float,
    idempotent: bool = True,
) -> NextStep:
    """Decide the job's next state from the outcome and its counters before this attempt.

    ``attempts`` counts charged attempts (a completion or a failure); an interruption
    (worker died, daemon crashed, drain deadline) is counted on its own and does not
    use up a retry, but too many of them make the job dead rather than crash-looping.
    A job that is not ``idempotent`` goes dead at its first interruption instead.
    """
    if outcome is Outcome.COMPLETED:
        return NextStep(JobState.COMPLETED, attempts + 1, interruptions, now, None)
    if outcome is Outcome.INTERRUPTED:
        interruptions += 1
        if not idempotent:
            reason = "interrupted while running; not re-run because the job is not idempotent"
            return NextStep(JobState.DEAD, attempts, interruptions, now, reason)
        if interruptions > policy.max_interruptions:
            reason = f"interrupted {interruptions} times (limit {policy.max_interruptions})"
            return NextStep(JobState.DEAD, attempts, interruptions, now, reason)
        return NextStep(JobState.PENDING, attempts, interruptions, now, None)
    attempts += 1
    if attempts > max_retries:
        times = "once" if attempts == 1 else f"{attempts} times"
        reason = f"failed {times}; no retries left (max_retries={max_retries})"
        return NextStep(JobState.DEAD, attempts, interruptions, now, reason)
    delay = backoff_delay(policy.backoff_base, attempts, policy.backoff_max)
    return NextStep(JobState.FAILED, attempts, interruptions, now + delay, None)
