"""Followers of jobs' output (``queuectl logs -f``): the daemon's side of the relay.

Executors send a followed job's output as :class:`~queuectld.execproto.JobOutput`
ranges, each with its offset in the stream; a follower joining a running job first
gets what the attempt kept so far, while the others get it again. Each follower keeps
the next offset it expects per attempt and stream: it drops what it already has,
holds a range that comes before the ones leading to it, and shows a marker where
bytes are missing (cut by the log cap, or skipped because the follower fell more
than :data:`FOLLOWER_BACKLOG_BYTES` behind).
"""

from __future__ import annotations

import asyncio
import collections

from queuectld.execproto import JobOutput

# Output a follower may have waiting to be sent; past it, output is skipped (and said so).
FOLLOWER_BACKLOG_BYTES = 8 * 1024 * 1024
# Output a follower may hold until the ranges leading to it come; past it, it is shown
# after a gap.
FOLLOWER_HOLD_BYTES = 8 * 1024 * 1024


class Follower:
    """One ``logs -f`` of one job: the output still to send, in order."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.changed = asyncio.Event()
        self.sent = 0  # bytes of output taken so far
        self._chunks: collections.deque[tuple[str, bytes]] = collections.deque()
        self._queued = 0
        self._next: dict[tuple[int, str], int] = {}  # (attempt, stream) -> next offset
        self._skipped: dict[tuple[int, str], int] = {}  # dropped here, not shown yet
        self._newline: dict[tuple[int, str], bool] = {}  # the last byte shown was "\n"
        # Ranges that came before the ones leading to them (a late follower sees the
        # others' output before its own copy of what was written so far): held until then.
        self._early: dict[tuple[int, str], list[JobOutput]] = {}
        self._held = 0  # bytes in _early

    def offer(self, out: JobOutput) -> None:
        """Take what is new in ``out``; show a marker for bytes missing before it."""
        key = (out.attempt, out.stream)
        held = self._early.pop(key, [])
        held.append(out)
        held.sort(key=lambda o: o.offset)
        self._held += len(out.data)
        # In order, as far as the ranges connect; past a cut, or once too much is held
        # (what leads to them will not come: the attempt ended before this follower's
        # copy of its start was sent), after a gap.
        while held and (
            held[0].offset <= self._next.get(key, 0)
            or held[0].cut
            or self._held > FOLLOWER_HOLD_BYTES
        ):
            first = held.pop(0)
            self._held -= len(first.data)
            self._take(key, first)
        if held:
            self._early[key] = held
        self.changed.set()

    def _take(self, key: tuple[int, str], out: JobOutput) -> None:
        at = self._next.get(key, 0)
        end = out.offset + len(out.data)
        if end <= at:
            return  # already shown
        data = out.data[at - out.offset :] if out.offset < at else out.data
        self._next[key] = end
        if self._queued + len(data) > FOLLOWER_BACKLOG_BYTES:
            self._skipped[key] = self._skipped.get(key, 0) + len(data)
            return
        missing = self._skipped.pop(key, 0) + max(0, out.offset - at)
        if missing:
            lead = b"" if self._newline.get(key, True) else b"\n"
            self._put(out.stream, lead + f"[... {missing} bytes not shown ...]\n".encode())
        self._put(out.stream, data)
        self._newline[key] = data.endswith(b"\n")

    def _put(self, stream: str, data: bytes) -> None:
        self._chunks.append((stream, data))
        self._queued += len(data)

    def take(self) -> list[tuple[str, bytes]]:
        """The output waiting to be sent, as ``(stream, bytes)`` in order."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._queued = 0
        self.changed.clear()
        self.sent += sum(len(data) for _, data in chunks)
        return chunks


class OutputRelay:
    """Who follows which job; hands each output range to the job's followers."""

    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}

    def subscribe(self, job_id: str) -> Follower:
        follower = Follower(job_id)
        self._followers.setdefault(job_id, set()).add(follower)
        return follower

    def unsubscribe(self, follower: Follower) -> bool:
        """Forget ``follower``; True if it was its job's last one."""
        others = self._followers.get(follower.job_id, set())
        others.discard(follower)
        if others:
            return False
        self._followers.pop(follower.job_id, None)
        return True

    def deliver(self, out: JobOutput) -> None:
        for follower in self._followers.get(out.job_id, ()):
            follower.offer(out)
