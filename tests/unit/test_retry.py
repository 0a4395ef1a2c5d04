"""The backoff policy: pure functions from an attempt's outcome to the job's next state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuectl.protocol import JobState, Outcome
from queuectld.jobs import TRANSITIONS, can_transition
from queuectld.retry import RetryPolicy, backoff_delay, next_step

NOW = 1_000_000.0
FAILURES = [Outcome.FAILED, Outcome.TIMEOUT, Outcome.NOT_FOUND, Outcome.SIGNALED, Outcome.ERROR]


def test_backoff_delay_is_base_to_the_attempts() -> None:
    assert backoff_delay(2.0, 1, 3600) == 2.0
    assert backoff_delay(2.0, 2, 3600) == 4.0
    assert backoff_delay(2.0, 3, 3600) == 8.0
    assert backoff_delay(3.0, 2, 3600) == 9.0
    assert backoff_delay(1.0, 50, 3600) == 1.0


def test_backoff_delay_edges() -> None:
    assert backoff_delay(2.0, 0, 3600) == 0.0
    assert backoff_delay(2.0, -1, 3600) == 0.0
    assert backoff_delay(2.0, 20, 60.0) == 60.0  # capped
    assert backoff_delay(2.0, 5, 0.0) == 0.0  # a cap of 0 means retry at once
    assert backoff_delay(60.0, 10_000, 3600.0) == 3600.0  # overflows a float: the cap


@given(
    st.floats(1.0, 60.0),
    st.integers(-5, 2000),
    st.floats(0.0, 7 * 86400.0),
)
def test_backoff_delay_is_bounded(base: float, attempts: int, cap: float) -> None:
    delay = backoff_delay(base, attempts, cap)
    assert 0.0 <= delay <= cap or (attempts <= 0 and delay == 0.0)
    if attempts > 0:
        assert delay <= backoff_delay(base, attempts + 1, cap)  # never shrinks


def test_completed() -> None:
    step = next_step(Outcome.COMPLETED, 0, 0, 3, RetryPolicy(), NOW)
    assert (step.state, step.attempts, step.interruptions, step.reason) == (
        JobState.COMPLETED,
        1,
        0,
        None,
    )
    # A completion after failures counts the attempt too.
    assert next_step(Outcome.COMPLETED, 2, 1, 3, RetryPolicy(), NOW).attempts == 3


@pytest.mark.parametrize("outcome", FAILURES)
def test_failure_with_retries_left_waits_backoff(outcome: Outcome) -> None:
    policy = RetryPolicy(backoff_base=2.0)
    first = next_step(outcome, 0, 0, 3, policy, NOW)
    assert first.state is JobState.FAILED
    assert first.attempts == 1
    assert first.run_at == NOW + 2.0
    second = next_step(outcome, 1, 0, 3, policy, NOW)
    assert (second.state, second.attempts, second.run_at) == (JobState.FAILED, 2, NOW + 4.0)
    third = next_step(outcome, 2, 0, 3, policy, NOW)
    assert (third.state, third.run_at) == (JobState.FAILED, NOW + 8.0)


@pytest.mark.parametrize("outcome", FAILURES)
def test_failure_without_retries_left_is_dead(outcome: Outcome) -> None:
    step = next_step(outcome, 3, 0, 3, RetryPolicy(), NOW)
    assert step.state is JobState.DEAD
    assert step.attempts == 4
    assert step.reason is not None and "max_retries=3" in step.reason
    # max_retries 0: the first failure goes straight to the DLQ.
    assert next_step(outcome, 0, 0, 0, RetryPolicy(), NOW).state is JobState.DEAD


def test_backoff_max_caps_the_wait() -> None:
    policy = RetryPolicy(backoff_base=10.0, backoff_max=30.0)
    assert next_step(Outcome.FAILED, 4, 0, 10, policy, NOW).run_at == NOW + 30.0


def test_interruption_requeues_without_charging_an_attempt() -> None:
    policy = RetryPolicy(max_interruptions=2)
    step = next_step(Outcome.INTERRUPTED, 1, 0, 3, policy, NOW)
    assert (step.state, step.attempts, step.interruptions, step.run_at) == (
        JobState.PENDING,
        1,
        1,
        NOW,
    )
    assert next_step(Outcome.INTERRUPTED, 1, 1, 3, policy, NOW).state is JobState.PENDING


def test_too_many_interruptions_make_the_job_dead() -> None:
    policy = RetryPolicy(max_interruptions=2)
    step = next_step(Outcome.INTERRUPTED, 0, 2, 3, policy, NOW)
    assert step.state is JobState.DEAD
    assert step.interruptions == 3
    assert step.attempts == 0
    assert step.reason is not None and "interrupted 3 times" in step.reason
    # A limit of 0: the first interruption is final.
    none_allowed = RetryPolicy(max_interruptions=0)
    assert next_step(Outcome.INTERRUPTED, 0, 0, 3, none_allowed, NOW).state is JobState.DEAD


@given(
    st.sampled_from(list(Outcome)),
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.floats(1.0, 10.0),
)
def test_next_step_is_always_a_legal_transition(
    outcome: Outcome, attempts: int, interruptions: int, max_retries: int, base: float
) -> None:
    policy = RetryPolicy(max_retries=max_retries, backoff_base=base, max_interruptions=5)
    step = next_step(outcome, attempts, interruptions, max_retries, policy, NOW)
    assert can_transition(JobState.PROCESSING, step.state)
    assert step.run_at >= NOW
    assert step.attempts in (attempts, attempts + 1)
    assert step.interruptions in (interruptions, interruptions + 1)
    assert (step.state in (JobState.DEAD, JobState.CANCELLED)) == (step.reason is not None)
    if step.state is JobState.FAILED:
        assert step.attempts <= max_retries


def test_transition_table() -> None:
    assert can_transition(JobState.PENDING, JobState.PROCESSING)
    assert can_transition(JobState.DEAD, JobState.PENDING)
    assert can_transition(JobState.COMPLETED, JobState.PENDING)  # `retry`
    assert not can_transition(JobState.COMPLETED, JobState.PROCESSING)
    assert not can_transition(JobState.WAITING, JobState.PROCESSING)  # promoted first
    assert not can_transition(JobState.CANCELLED, JobState.PROCESSING)
    assert not can_transition(JobState.PENDING, JobState.COMPLETED)
    assert not can_transition(JobState.PROCESSING, JobState.PROCESSING)
    assert set(TRANSITIONS) == set(JobState)


def test_an_interrupted_job_that_is_not_idempotent_is_dead_at_once() -> None:
    policy = RetryPolicy(max_interruptions=5)
    step = next_step(Outcome.INTERRUPTED, 0, 0, 3, policy, 100.0, idempotent=False)
    assert step.state is JobState.DEAD
    assert step.interruptions == 1
    assert step.attempts == 0
    assert step.reason is not None and "not idempotent" in step.reason
    # A failure of such a job is retried as usual: only re-runs after interruptions are refused.
    failed = next_step(Outcome.FAILED, 0, 0, 3, policy, 100.0, idempotent=False)
    assert failed.state is JobState.FAILED


def test_queue_limits_allowances_and_token_bucket() -> None:
    from queuectld.queues import QueueLimits, allowances, next_token_at

    limits = {
        "paused": QueueLimits("paused", paused=True),
        "two": QueueLimits("two", concurrency=2),
        "rate": QueueLimits("rate", rate_count=4, rate_period=2.0, tokens=1.5, tokens_at=NOW),
    }
    counts = {
        "paused": {JobState.PENDING: 9},
        "two": {JobState.PENDING: 9, JobState.PROCESSING: 1},
        "rate": {JobState.PENDING: 9},
        "free": {JobState.PENDING: 3},
    }
    assert allowances(limits, counts, 5, NOW) == {"two": 1, "rate": 1, "free": 3}
    assert allowances(limits, counts, 5, NOW + 1.0) == {"two": 1, "rate": 3, "free": 3}
    assert limits["rate"].tokens_now(NOW + 100) == 4.0  # never more than the bucket holds
    spent = QueueLimits("rate", rate_count=4, rate_period=2.0, tokens=0.0, tokens_at=NOW)
    assert next_token_at({"rate": spent}, counts, NOW) == NOW + 0.5
    changed = limits["two"].changed(None, "10/m", True)
    assert (changed.concurrency, changed.rate, changed.paused) == (2, "10/m", True)
    assert changed.changed(0, "", False).limited is False
