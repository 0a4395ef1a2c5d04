"""The Starlette application: the operations table routed, plus metrics, events and pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from queuectl.errors import InvalidRequest, QueuectlError
from queuectl.http import openapi, problems
from queuectl.http.guard import BodyTooLarge, Guard
from queuectl.http.metrics import registry_for
from queuectl.http.operations import OPERATIONS, Inputs, Operation, seed_metrics
from queuectl.http.settings import GatewaySettings
from queuectl.http.upstream import EventHub, Upstream

log = structlog.get_logger("queuectl.http")

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0  # a comment line on an idle event stream, so proxies and browsers keep it
# Pages load only what the package ships: no CDN, no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
Endpoint = Callable[[Request], Awaitable[Response]]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _number(text: str) -> float | int:
    # JSON has one number type: 3.0 is the integer 3 (as JSON Schema says), so a
    # count or a retry limit written 3.0 reaches the daemon as the integer it is.
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


async def read_json(request: Request) -> Any:
    """The request's JSON body (None when empty); strict JSON only (no NaN, no Infinity)."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_number)
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise InvalidRequest(f"the request body is not valid JSON ({detail})") from None
    if value is None:
        raise InvalidRequest("the request body is JSON null; send an object or no body")
    return value


async def _answer(upstream: Upstream, fn: Callable[[Any], Any], ok: int = 200) -> Response:
    """Run one Client call in the thread pool; errors become problem+json."""
    try:
        result = await asyncio.to_thread(upstream.call, fn)
    except QueuectlError as exc:
        return problems.from_error(exc)
    return JSONResponse(result, status_code=ok)


def _endpoint(ops: list[Operation], upstream: Upstream) -> Endpoint:
    """One endpoint for the operations of one path, chosen by method (so that a 405
    names every method the path has in its Allow header)."""
    by_method = {op.method: op for op in ops}

    async def endpoint(request: Request) -> Response:
        op = by_method[request.method if request.method != "HEAD" else "GET"]
        try:
            body = await read_json(request) if op.body is not None else None
        except BodyTooLarge:
            return problems.gateway(413, "the request body is over the gateway's limit")
        except InvalidRequest as exc:
            return problems.from_error(exc)
        inputs = Inputs(dict(request.path_params), request.query_params, body)
        return await _answer(upstream, lambda c: op.call(c, inputs), op.ok)

    endpoint.__name__ = "_".join(op.name for op in ops)
    return endpoint


def _operation_routes(upstream: Upstream) -> list[BaseRoute]:
    paths: dict[str, list[Operation]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, []).append(op)
    return [
        Route(path, _endpoint(ops, upstream), methods=[op.method for op in ops])
        for path, ops in paths.items()
    ]


def create_app(settings: GatewaySettings, autostart: bool | None = None) -> Starlette:
    """The gateway for ``settings``; it connects to the daemon on demand."""
    upstream = Upstream(settings.socket, autostart)
    hub: EventHub
    registry, counters = registry_for(upstream, lambda: hub.connected)
    hub = EventHub(upstream, counters.observe)
    doc = openapi.document()
    docs_html = openapi.docs_page(doc)

    async def metrics(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        if "openmetrics" in accept or "text/plain" in accept:
            encoder, content_type = choose_encoder(accept)
            data = await asyncio.to_thread(encoder, registry)
            return Response(data, headers={"Content-Type": content_type})
        return await _answer(upstream, seed_metrics)

    async def events(request: Request) -> Response:
        queue = hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                yield _sse({"type": "upstream", "connected": hub.connected})
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:
                        return  # too far behind: the browser reconnects
                    yield _sse(event)
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(doc)

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": CSP})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    routes = _operation_routes(upstream)
    routes += [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            hub.stop()

    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, settings=settings)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False, default=str)}\n\n"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = problems.GATEWAY_CODES.get(exc.status_code, "http_error")
    detail = {404: f"no such resource {request.url.path}; see /docs", 405: "method not allowed"}
    return problems.problem(
        exc.status_code, code, detail.get(exc.status_code, str(exc.detail)), exc.headers
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the gateway's log, never to the client.
    log.error("http_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return problems.gateway(500, "the gateway failed on this request; its log has the details")
