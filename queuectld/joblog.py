"""Job output files, one per job, in the seed's format; every attempt is appended."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Executors import this module for every job's log: they need neither.
    from pathlib import Path

    from queuectl.protocol import LogChunk


def log_path(log_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<log_dir>/job_<id>.txt``; ids are validated at enqueue, so this stays inside log_dir."""
    from pathlib import Path

    return Path(log_dir) / f"job_{job_id}.txt"


def iso(ts: float) -> str:
    """UTC timestamp with milliseconds, e.g. ``2026-11-27T19:01:02.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def format_header(
    *,
    job_id: str,
    attempt: int,
    command: str,
    started_at: float,
    finished_at: float,
    exit_code: int | None,
    outcome: str,
    error: str | None,
    resources: str | None = None,
) -> bytes:
    """The head of one attempt's block, up to the stdout section's title.

    The block goes on with stdout, ``--- STDERR ---``, stderr and an empty line.
    ``resources`` (CPU time, peak memory, containment, limits) is a line of its own.
    """
    head = [
        f"=== job {job_id} attempt {attempt} ===",
        f"Command: {command}",
        f"Started: {iso(started_at)}",
        f"Finished: {iso(finished_at)}",
        f"Duration: {finished_at - started_at:.3f}s",
        f"Exit Code: {'' if exit_code is None else exit_code}",
        f"Outcome: {outcome}" + (f" ({error})" if error else ""),
        *([f"Resources: {resources}"] if resources else []),
        "--- STDOUT ---",
    ]
    return "\n".join(head).encode() + b"\n"


def append(path: str | os.PathLike[str], block: bytes, owner_uid: int | None = None) -> None:
    """Append one block with a single write (O_APPEND), creating the file 0640.

    A root worker running a job for another user gives that user the file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        if owner_uid is not None:
            os.fchown(fd, owner_uid, -1)
        _write_all(fd, block)
    finally:
        os.close(fd)


# A piece of a block: bytes, or ``(fd, offset, length)``: a range of an open file.
Piece = bytes | tuple[int, int, int]


def append_pieces(
    path: str | os.PathLike[str], pieces: list[Piece], owner_uid: int | None = None
) -> None:
    """Append a block given as pieces; file ranges are copied by the kernel.

    ``copy_file_range`` refuses an ``O_APPEND`` target, so the file is opened plainly
    and written at its end: one job's attempts never run at once, so nothing else
    appends to it meanwhile.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        if owner_uid is not None:
            os.fchown(fd, owner_uid, -1)
        os.lseek(fd, 0, os.SEEK_END)
        for piece in pieces:
            if isinstance(piece, bytes):
                _write_all(fd, piece)
            else:
                _copy_range(piece[0], fd, piece[1], piece[2])
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    while length > 0:
        try:
            copied = os.copy_file_range(src, dst, length, offset)
        except OSError:
            copied = 0  # another file system, or no copy_file_range: copy by hand
        if copied <= 0:
            data = os.pread(src, min(length, 1 << 20), offset)
            if not data:
                return
            _write_all(dst, data)
            copied = len(data)
        offset += copied
        length -= copied


def read_chunk(path: Path, offset: int, max_bytes: int) -> LogChunk | None:
    """Up to ``max_bytes`` of a log from ``offset``; ``None`` if the file does not exist."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return None
    return {"path": str(path), "data": data, "offset": offset, "size": size}
