"""Memory sizes as people write them (``512M``, ``2G``): parsed and printed.

Standard library only, so the cheap-to-import renderer can use it too.
"""

from __future__ import annotations

import math

from queuectl.errors import InvalidRequest

MAX_SIZE = 1 << 50  # 1P: more than any machine, less than SQLite's integers
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1048576`` (K, M, G, T are powers of 1024) as bytes."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS else ""
    number = raw[: len(raw) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise InvalidRequest(f"memory must be a size such as 512M or 2G, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"memory must be a positive size such as 512M, not {text!r}")
    size = int(value * _SIZE_UNITS[unit])
    if size > MAX_SIZE:
        raise InvalidRequest(f"memory must be at most {format_size(MAX_SIZE)}, not {text!r}")
    return size


def format_size(size: int) -> str:
    """Bytes as the shortest exact ``512M``-style size, else MiB with one decimal."""
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size / (1 << 20):.1f}M"


def human_size(size: int) -> str:
    """A measured size, rounded for people: ``18.9M``, ``912K``, ``1.2G``."""
    for unit in ("T", "G", "M"):
        if size >= _SIZE_UNITS[unit]:
            return f"{size / _SIZE_UNITS[unit]:.1f}{unit}"
    return f"{size // 1024}K"


__all__ = ["format_size", "human_size", "parse_size"]
