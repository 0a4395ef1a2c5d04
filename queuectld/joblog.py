"""Job output files, one per job, in the seed's format; every attempt is appended."""

from __future__ import annotations

import os
import time
from pathlib import Path

from queuectl.protocol import LogChunk


def log_path(log_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<log_dir>/job_<id>.txt``; ids are validated at enqueue, so this stays inside log_dir."""
    return Path(log_dir) / f"job_{job_id}.txt"


def iso(ts: float) -> str:
    """UTC timestamp with milliseconds, e.g. ``2026-11-27T19:01:02.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def format_attempt(
    *,
    job_id: str,
    attempt: int,
    command: str,
    started_at: float,
    finished_at: float,
    exit_code: int | None,
    outcome: str,
    error: str | None,
    stdout: bytes,
    stderr: bytes,
    stdout_dropped: int,
    stderr_dropped: int,
) -> bytes:
    """One attempt's block: command, timestamps, exit code, stdout, stderr."""
    head = [
        f"=== job {job_id} attempt {attempt} ===",
        f"Command: {command}",
        f"Started: {iso(started_at)}",
        f"Finished: {iso(finished_at)}",
        f"Duration: {finished_at - started_at:.3f}s",
        f"Exit Code: {'' if exit_code is None else exit_code}",
        f"Outcome: {outcome}" + (f" ({error})" if error else ""),
        "--- STDOUT ---",
    ]
    parts = ["\n".join(head).encode() + b"\n", _section(stdout, stdout_dropped)]
    parts += [b"--- STDERR ---\n", _section(stderr, stderr_dropped), b"\n"]
    return b"".join(parts)


def _section(data: bytes, dropped: int) -> bytes:
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if dropped:
        data += f"[... output truncated: {dropped} more bytes not kept]\n".encode()
    return data


def append(path: str | os.PathLike[str], block: bytes, owner_uid: int | None = None) -> None:
    """Append one block with a single write (O_APPEND), creating the file 0640.

    A root worker running a job for another user gives that user the file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        if owner_uid is not None:
            os.fchown(fd, owner_uid, -1)
        view = memoryview(block)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def read_chunk(path: Path, offset: int, max_bytes: int) -> LogChunk | None:
    """Up to ``max_bytes`` of a log from ``offset``; ``None`` if the file does not exist."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return None
    return LogChunk(path=str(path), data=data, offset=offset, size=size)
