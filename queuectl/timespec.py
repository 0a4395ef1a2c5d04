"""Durations (``30s``, ``5m``, ``2h``, ``1d``) and points in time (ISO 8601) as users write them.

Pure functions, shared by the CLI, the HTTP gateway and anything else that reads
times from people; each raises :class:`ValueError` with a sentence a user can act on.
"""

from __future__ import annotations

import datetime as dt

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``30``, ``2.5``, ``30s``, ``5m``, ``2h`` or ``1d``; plain numbers are seconds."""
    value = text.strip().lower()
    scale = 1.0
    if value[-1:] in UNITS:
        scale, value = UNITS[value[-1]], value[:-1]
    whole, _, frac = value.partition(".")
    if not (whole + frac).isdigit() or not whole.isascii() or not frac.isascii():
        raise ValueError(
            f"{text!r} is not a duration; use seconds or a number with s, m, h or d "
            "(30, 30s, 5m, 2h, 1d)"
        )
    return float(value) * scale


def parse_time(text: str) -> float:
    """Unix time of an ISO 8601 date and time; one without an offset is local time."""
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-01T09:00:00Z "
            "or 2026-12-01 09:00 (local time)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as the user's clock shows it
    return when.timestamp()
