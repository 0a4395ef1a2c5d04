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
    jitter: float = 0.0  # each delay varies by up to this fraction of itself, either way


@dataclass(frozen=True)
class NextStep:
    """Where a job goes after an attempt, and when it may run again."""

    state: JobState
    attempts: int
    interruptions: int
    run_at: float
    reason: str | None


def backoff_delay(
    base: float, attempts: int, cap: float, jitter: float = 0.0, spread: float = 0.5
) -> float:
    """Seconds to wait before the next try: ``base ** attempts``, at most ``cap``.

    With ``jitter`` j the delay is scaled by ``1 + j * (2 * spread - 1)``: ``spread`` is a
    random number in [0, 1) from the caller (0.5 gives the plain delay), so that many
    jobs failing together do not all come back at the same moment. The cap still holds.
    """
    if attempts <= 0:
        return 0.0
    try:
        delay = float(min(cap, base**attempts))
    except OverflowError:
        delay = cap
    return min(cap, delay * (1.0 + jitter * (2.0 * spread - 1.0)))


def next_step(
    outcome: Outcome,
    attempts: int,
    interruptions: int,
    max_retries: int,
    policy: RetryPolicy,
    now: float,
    idempotent: bool = True,
    retry_killed: bool = False,
    spread: float = 0.5,
) -> NextStep:
    """Decide the job's next state from the outcome and its counters before this attempt.

    ``attempts`` counts charged attempts (a completion or a failure); an interruption
    (worker died, daemon crashed, drain deadline) is counted on its own and does not
    use up a retry, but too many of them make the job dead rather than crash-looping.
    A job that is not ``idempotent`` goes dead at its first interruption instead.
    A ``killed`` attempt (``queuectl kill``) ends the job ``cancelled``, unless the kill
    asked for ``retry_killed``: then it counts as a failure. ``spread`` is the random
    draw for the backoff's jitter.
    """
    if outcome is Outcome.COMPLETED:
        return NextStep(JobState.COMPLETED, attempts + 1, interruptions, now, None)
    if outcome is Outcome.KILLED and not retry_killed:
        return NextStep(JobState.CANCELLED, attempts + 1, interruptions, now, "killed by request")
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
    delay = backoff_delay(policy.backoff_base, attempts, policy.backoff_max, policy.jitter, spread)
    return NextStep(JobState.FAILED, attempts, interruptions, now + delay, None)
