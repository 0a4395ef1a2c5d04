"""What stands between the network and the daemon: token, Origin check, body limit, audit log.

Pure ASGI middleware, so that it sees every request (API, dashboard, static files,
event stream) before any of it is routed or parsed.

- **Token.** With a token configured (required off loopback) every request needs
  ``Authorization: Bearer TOKEN``, or HTTP Basic with the token as the password (what a
  browser sends to the dashboard after its login prompt, EventSource included). The
  comparison is constant-time; a token in the query string is never looked at.
- **Origin.** A mutating request carrying an ``Origin`` (every browser sends one) must
  come from the gateway's own origin or an allowed one: a foreign page cannot make a
  visitor's browser enqueue commands.
- **Size.** A declared ``Content-Length`` over the limit is refused before reading;
  a chunked body is counted as it arrives and refused once over.
- **Audit.** Every mutating request is logged with who made it (peer address and, for
  Basic, the user name given) and what it got.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from queuectl.http import problems
from queuectl.http.settings import GatewaySettings

log = structlog.get_logger("queuectl.http")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(Exception):
    """A chunked body went over the limit while it was being read."""


def _identity(headers: Headers, token: str | None) -> str | None:
    """Who the request says it is, if its credentials match ``token``; None if they do not."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    scheme = scheme.lower()
    if token is None:
        return "anonymous"
    expected = token.encode()
    if scheme == "bearer":
        return "bearer" if hmac.compare_digest(value.strip().encode(), expected) else None
    if scheme == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        if hmac.compare_digest(password, expected):
            return f"basic:{user.decode('utf-8', 'replace')[:64]}"
    return None


def _own_origins(scope: Scope, headers: Headers) -> set[str]:
    """The origins the gateway is reached under: what the Host header names."""
    host = headers.get("host")
    scheme = scope.get("scheme", "http")
    return {f"{scheme}://{host}"} if host else set()


class Guard:
    """The ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        who = _identity(headers, self.settings.token)
        if who is None:
            await self._refuse(
                scope,
                receive,
                send,
                problems.gateway(
                    401,
                    "this gateway needs its token: send Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": 'Bearer realm="queuectl", Basic realm="queuectl"'},
                ),
            )
            return
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            allowed = _own_origins(scope, headers) | set(self.settings.allowed_origins)
            if origin is not None and origin.rstrip("/") not in allowed:
                await self._refuse(
                    scope,
                    receive,
                    send,
                    problems.gateway(
                        403,
                        f"requests from pages of {origin} may not change the queue; "
                        "add it to allowed_origins in the gateway's config to allow it",
                    ),
                )
                self._audit(scope, who, 403)
                return
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, receive, send, self._too_large())
            if method not in SAFE_METHODS:
                self._audit(scope, who, 413)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def audited(message: Message) -> None:
            # Logged before the answer leaves: whoever sees the answer can find the line.
            if message["type"] == "http.response.start":
                self._audit(scope, who, message["status"])
            await send(message)

        await self.app(scope, counted, audited if method not in SAFE_METHODS else send)

    def _too_large(self) -> problems.Problem:
        return problems.gateway(
            413,
            f"the request body is over {self.settings.max_body_bytes} bytes; "
            "send fewer jobs a request",
        )

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, response: problems.Problem
    ) -> None:
        # The body is not read: the server closes the connection after this answer.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    def _audit(self, scope: Scope, who: str, status: int) -> None:
        client: Any = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "unknown"
        log.info(
            "http_request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            peer=peer,
            who=who,
        )
