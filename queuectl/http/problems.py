"""Errors as ``application/problem+json`` (RFC 9457), carrying the daemon's stable code.

One mapping from :mod:`queuectl.errors` codes to HTTP statuses; the gateway's own
refusals (no token, foreign Origin, body too large) use the same body shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.responses import JSONResponse

from queuectl.errors import (
    Conflict,
    InternalError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProtocolError,
    QueuectlError,
    ShuttingDown,
    StorageFull,
    StoreUnavailable,
    Unavailable,
)

PROBLEM_TYPE = "application/problem+json"

# The daemon's error codes → HTTP statuses. A daemon-side failure is the upstream's
# (502), never a 500 of the gateway's own.
STATUS_BY_CODE: dict[str, int] = {
    InvalidRequest.code: 400,
    PermissionDenied.code: 403,
    NotFound.code: 404,
    Conflict.code: 409,
    StorageFull.code: 507,
    ProtocolError.code: 502,
    InternalError.code: 502,
    Unavailable.code: 503,
    ShuttingDown.code: 503,
    StoreUnavailable.code: 503,
}

# Refusals that come from the gateway itself, not from the daemon.
GATEWAY_CODES: dict[int, str] = {
    401: "unauthorized",
    403: "forbidden_origin",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    500: "gateway_error",
}


class Problem(JSONResponse):
    """A problem+json response."""

    media_type = PROBLEM_TYPE


def problem(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> Problem:
    """A problem body: ``type`` names the stable code, ``detail`` is one sentence."""
    body = {
        "type": f"urn:queuectl:error:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    return Problem(body, status_code=status, headers=dict(headers or {}))


def from_error(exc: QueuectlError) -> Problem:
    """The response for an error the daemon (or the client library) reported."""
    status = STATUS_BY_CODE.get(exc.code, 502)
    headers = {"Retry-After": "5"} if status == 503 else None
    return problem(status, exc.code, exc.message, headers)


def gateway(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Problem:
    """A refusal by the gateway itself (its code from :data:`GATEWAY_CODES`)."""
    return problem(status, GATEWAY_CODES[status], detail, headers)
