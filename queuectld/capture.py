"""A job's output: kept from its pipes without Python per byte, written as its log block.

Each stream of a job (stdout, stderr) is a pipe that :class:`Capture` *splices* into a
private unlinked file: the first half of the cap in order, the last half as a ring, so
a job that prints a gigabyte costs neither memory nor disk and its log keeps both ends.
:func:`write_log` appends the attempt's block in the seed's format to ``job_<id>.txt``,
copying the kept ranges file to file (``copy_file_range``).

While someone follows the job (``queuectl logs -f``) a capture also hands each range
it just spliced to its ``sink``, read back from the file (page cache) with one
``pread`` per chunk; nobody following costs one attribute test per chunk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from collections.abc import Callable

from queuectl.protocol import Outcome
from queuectld import joblog
from queuectld.execproto import RunJob

READ_CHUNK = 65536
# Log blocks whose kept output is at most this big are assembled in memory and written
# at once; bigger ones are copied file to file by the kernel.
SMALL_BLOCK = 64 * 1024
_SPLICE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)


class Capture:
    """One output stream of a job, moved from its pipe into a private file by the kernel.

    The first ``head`` bytes are kept in order; later bytes go round a ring of ``tail``
    bytes, so the file never holds more than ``head + tail`` and keeps the end too.
    """

    splice_ok = True

    def __init__(self, pipe: int, limit: int, tmp_dir: str) -> None:
        self.pipe = pipe
        self.head = limit - limit // 2
        self.tail = limit // 2
        self.tmp_dir = tmp_dir
        self.file: int | None = None
        self.total = 0  # bytes the job wrote to the stream
        self.open = True
        # Called with (stream offset, bytes) for every range kept from now on: the job
        # is followed. None when nobody follows.
        self.sink: Callable[[int, bytes], None] | None = None

    def pump(self) -> bool:
        """Move what the pipe holds into the file; False once the pipe reached EOF.

        Call it when the pipe is readable. The file is made only when there are bytes
        to keep: most short jobs print nothing, and making a file costs an inode.
        """
        if self.file is None:
            if not _bytes_waiting(self.pipe):
                return False  # readable with nothing in it: EOF
            self.file = _private_file(self.tmp_dir)
        while True:
            if self.total < self.head:
                offset, room = self.total, self.head - self.total
            else:
                pos = (self.total - self.head) % self.tail
                offset, room = self.head + pos, self.tail - pos
            count = min(room, READ_CHUNK)
            try:
                if self.splice_ok:
                    moved = os.splice(
                        self.pipe, self.file, count, offset_dst=offset, flags=_SPLICE_FLAGS
                    )
                else:
                    moved = self._copy(offset, count)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.splice_ok:
                    raise
                Capture.splice_ok = False  # this kernel or file system cannot splice
                continue
            if moved == 0:
                return False
            if self.sink is not None:
                self.sink(self.total, os.pread(self.file, moved, offset))
            self.total += moved

    def _copy(self, offset: int, count: int) -> int:
        data = os.read(self.pipe, count)
        assert self.file is not None
        os.pwrite(self.file, data, offset)
        return len(data)

    @property
    def dropped(self) -> int:
        return max(0, self.total - self.head - self.tail)

    def pieces(self) -> list[bytes | tuple[int, int, int]]:
        """The kept output in order: bytes, or ``(fd, offset, length)`` file ranges."""
        if self.file is None or self.total == 0:
            return []
        if not self.dropped:
            return [(self.file, 0, self.total)]
        start = self.head + (self.total - self.head) % self.tail
        end = self.head + self.tail
        marker = f"[... output truncated: {self.dropped} more bytes not kept ...]\n".encode()
        head_nl = b"" if self._byte_at(self.head - 1) == b"\n" else b"\n"
        return [
            (self.file, 0, self.head),
            head_nl + marker,
            (self.file, start, end - start),
            (self.file, self.head, start - self.head),
        ]

    def kept(self) -> list[tuple[int, bytes, bool]]:
        """What is kept so far as ``(stream offset, bytes, cut)`` in order, in chunks of
        at most :data:`READ_CHUNK` (a follower joining a running job starts with these);
        ``cut`` marks the first chunk after bytes that were not kept."""
        if self.file is None or self.total == 0:
            return []
        if not self.dropped:
            ranges = [(0, 0, self.total)]  # (stream offset, file offset, length)
        else:
            start = self.head + (self.total - self.head) % self.tail
            first = self.total - self.tail  # the stream offset the ring begins with
            ranges = [
                (0, 0, self.head),
                (first, start, self.head + self.tail - start),
                (first + self.head + self.tail - start, self.head, start - self.head),
            ]
        out = []
        for stream_at, file_at, length in ranges:
            for skip in range(0, length, READ_CHUNK):
                size = min(READ_CHUNK, length - skip)
                data = os.pread(self.file, size, file_at + skip)
                cut = bool(self.dropped) and stream_at + skip == self.total - self.tail
                out.append((stream_at + skip, data, cut))
        return out

    def last_byte(self) -> bytes:
        if self.file is None or self.total == 0:
            return b""
        if self.total <= self.head + self.tail:
            return self._byte_at(self.total - 1)
        pos = self.head + (self.total - self.head - 1) % self.tail
        return self._byte_at(pos)

    def _byte_at(self, offset: int) -> bytes:
        assert self.file is not None
        return os.pread(self.file, 1, offset)

    def close(self) -> None:
        if self.open:
            os.close(self.pipe)
            self.open = False

    def release(self) -> None:
        self.close()
        if self.file is not None:
            os.close(self.file)
            self.file = None


def _bytes_waiting(pipe: int) -> int:
    """How many bytes a pipe holds (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


def _private_file(directory: str) -> int:
    """An unlinked read-write file, on the log directory's file system when possible."""
    for where in (directory, "/tmp"):
        try:
            return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (OSError, AttributeError):
            continue
    import tempfile

    fd, path = tempfile.mkstemp(prefix="queuectl-out-")
    os.unlink(path)
    return fd


def _header(
    run: RunJob,
    started: float,
    finished: float,
    exit_code: int | None,
    outcome: Outcome,
    error: str | None,
    resources: str | None,
) -> bytes:
    return joblog.format_header(
        job_id=run.job_id,
        attempt=run.attempt,
        command=run.command,
        started_at=started,
        finished_at=finished,
        exit_code=exit_code,
        outcome=outcome.value,
        error=error,
        resources=resources,
    )


def write_log(
    run: RunJob,
    started: float,
    finished: float,
    exit_code: int | None,
    outcome: Outcome,
    error: str | None,
    captures: tuple[Capture, Capture] | tuple[()],
    resources: str | None = None,
) -> None:
    """Append the attempt's block: header, stdout and stderr (both ends if cut).

    ``captures`` are stdout and stderr; none for an attempt that never started.
    """
    pieces: list[bytes | tuple[int, int, int]] = [
        _header(run, started, finished, exit_code, outcome, error, resources)
    ]
    for i, title in enumerate((None, b"--- STDERR ---\n")):
        if title is not None:
            pieces.append(title)
        if captures:
            capture = captures[i]
            pieces += capture.pieces()
            if capture.total and capture.last_byte() != b"\n":
                pieces.append(b"\n")
    pieces.append(b"\n")
    kept = sum(len(p) if isinstance(p, bytes) else p[2] for p in pieces)
    if kept <= SMALL_BLOCK:
        joblog.append(run.log_path, b"".join(_materialize(p) for p in pieces), run.uid)
    else:
        joblog.append_pieces(run.log_path, pieces, run.uid)


def _materialize(piece: bytes | tuple[int, int, int]) -> bytes:
    if isinstance(piece, bytes):
        return piece
    fd, offset, length = piece
    return os.pread(fd, length, offset) if length else b""
