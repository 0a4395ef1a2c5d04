"""The daemon's side of `logs -f`: each follower sees every byte once, gaps said."""

from __future__ import annotations

import pytest

from queuectld import follow
from queuectld.execproto import JobOutput
from queuectld.follow import Follower, OutputRelay


def out(
    offset: int, data: bytes, stream: str = "stdout", attempt: int = 1, cut: bool = False
) -> JobOutput:
    return JobOutput("j", attempt, stream, offset, data, cut)


def text(follower: Follower) -> bytes:
    return b"".join(data for _, data in follower.take())


def test_repeated_ranges_are_dropped_and_overlaps_trimmed() -> None:
    f = Follower("j")
    f.offer(out(0, b"abc"))
    f.offer(out(0, b"abcdef"))  # a replay for another follower: only the new part
    f.offer(out(3, b"def"))
    f.offer(out(6, b"gh"))
    assert text(f) == b"abcdefgh"
    assert f.sent == 8


def test_ranges_before_the_start_wait_for_it() -> None:
    # A late follower sees the others' live output before its own copy of the start.
    f = Follower("j")
    f.offer(out(6, b"ghi"))
    assert f.take() == []
    f.offer(out(0, b"abc"))
    f.offer(out(3, b"def"))
    assert text(f) == b"abcdefghi"


def test_ranges_out_of_order_wait_for_those_before_them() -> None:
    f = Follower("j")
    f.offer(out(0, b"ab"))
    f.offer(out(6, b"gh"))
    f.offer(out(4, b"ef"))
    assert text(f) == b"ab"
    f.offer(out(0, b"abcd"))  # the copy of what was written so far
    assert text(f) == b"cdefgh"


def test_bytes_cut_by_the_log_cap_are_shown_as_a_gap() -> None:
    f = Follower("j")
    f.offer(out(0, b"head"))
    f.offer(out(104, b"tail\n", cut=True))
    assert text(f) == b"head\n[... 100 bytes not shown ...]\ntail\n"


def test_streams_and_attempts_are_counted_apart() -> None:
    f = Follower("j")
    f.offer(out(0, b"o1\n"))
    f.offer(out(0, b"e1\n", stream="stderr"))
    f.offer(out(0, b"o2\n", attempt=2))  # a retry starts its streams again
    assert f.take() == [("stdout", b"o1\n"), ("stderr", b"e1\n"), ("stdout", b"o2\n")]


def test_a_follower_far_behind_skips_output_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "FOLLOWER_BACKLOG_BYTES", 10)
    f = Follower("j")
    f.offer(out(0, b"12345678\n"))
    f.offer(out(9, b"too much\n"))  # would pass the backlog: skipped
    assert text(f) == b"12345678\n"
    f.offer(out(18, b"next\n"))
    assert text(f) == b"[... 9 bytes not shown ...]\nnext\n"


def test_relay_hands_output_to_each_follower_of_the_job() -> None:
    relay = OutputRelay()
    a, b, other = relay.subscribe("j"), relay.subscribe("j"), relay.subscribe("k")
    relay.deliver(out(0, b"x"))
    assert text(a) == text(b) == b"x" and other.take() == []
    assert relay.unsubscribe(a) is False  # b still follows
    assert relay.unsubscribe(b) is True  # the last one: forwarding may stop
    relay.deliver(out(1, b"y"))  # nobody left: dropped
    assert relay.unsubscribe(other) is True


def test_ranges_that_never_connect_are_shown_after_a_gap_once_too_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The attempt ended before this follower's copy of its start was sent: what it
    # holds is shown after a gap rather than held without bound.
    monkeypatch.setattr(follow, "FOLLOWER_HOLD_BYTES", 8)
    f = Follower("j")
    f.offer(out(100, b"abcd"))
    assert f.take() == []
    f.offer(out(104, b"efgh\n"))
    assert text(f) == b"[... 100 bytes not shown ...]\nabcdefgh\n"
