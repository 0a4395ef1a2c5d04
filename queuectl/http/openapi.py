"""The OpenAPI 3.1 document, built from :data:`~queuectl.http.operations.OPERATIONS`,
and the ``/docs`` page rendered from it (plain HTML from the package, no CDN).
"""

from __future__ import annotations

import html
from http import HTTPStatus
from typing import Any

from queuectl import __version__
from queuectl.cli import SETTINGS_HELP
from queuectl.http import schemas as s
from queuectl.http.operations import OPERATIONS, Operation
from queuectl.http.problems import PROBLEM_TYPE

# The settings' names (the CLI's table, checked against the daemon's by tests/unit).
PATH_PARAMS: dict[str, s.Schema] = {
    "name": s.QUEUE_NAME,
    "id": s.JOB_ID,
    "key": {"type": "string", "enum": list(SETTINGS_HELP)},
}

# Operations outside the table: answers that are not one JSON document.
METRICS = {
    "get": {
        "operationId": "metrics",
        "summary": "Prometheus exposition (text or OpenMetrics, by Accept), else the seed's JSON",
        "tags": ["seed"],
        "responses": {
            "200": {
                "description": "Metrics",
                "content": {
                    "application/json": {"schema": s.SEED_METRICS},
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            },
            "401": {"$ref": "#/components/responses/Problem"},
        },
    }
}
EVENTS = {
    "get": {
        "operationId": "events",
        "summary": "Job events as server-sent events (one `data:` JSON object each)",
        "tags": ["jobs"],
        "responses": {
            "200": {
                "description": "An endless event stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "401": {"$ref": "#/components/responses/Problem"},
        },
    }
}


def _operation(op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in PATH_PARAMS.items()
        if f"{{{name}}}" in op.path
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query.items()
    ]
    responses: dict[str, Any] = {}
    for status in op.statuses:
        if status == op.ok:
            responses[str(status)] = {
                "description": HTTPStatus(status).phrase,
                "content": {"application/json": {"schema": op.result}},
            }
        else:
            responses[str(status)] = {"$ref": "#/components/responses/Problem"}
    doc: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": op.body}},
        }
    return doc


def document() -> dict[str, Any]:
    """The OpenAPI document of every operation the gateway serves."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    paths["/metrics"] = METRICS
    paths["/events"] = EVENTS
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "queuectl",
            "version": __version__,
            "description": "The queuectl HTTP gateway: a client of queuectld's socket. "
            "Errors are application/problem+json with the daemon's stable `code`.",
        },
        "paths": paths,
        "components": {
            "responses": {
                "Problem": {
                    "description": "A refusal, with the daemon's stable error code",
                    "content": {PROBLEM_TYPE: {"schema": s.PROBLEM}},
                }
            },
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        # The token is needed only when one is configured (always off loopback).
        "security": [{}, {"token": []}, {"basic": []}],
    }


def docs_page(doc: dict[str, Any]) -> str:
    """A readable HTML page of the document: every operation, its parameters and statuses."""
    e = html.escape
    rows = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = ", ".join(
                f"<code>{e(p['name'])}</code> ({e(p['in'])})" for p in op.get("parameters", [])
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            example = body["schema"].get("example") if body else None
            statuses = " ".join(
                f'<span class="st s{code[0]}">{e(code)}</span>' for code in op["responses"]
            )
            rows.append(
                f"<tr><td><b>{e(method.upper())}</b></td><td><code>{e(path)}</code></td>"
                f"<td>{e(op['summary'])}"
                + (f"<br>parameters: {params}" if params else "")
                + (f"<br>body: <code>{e(str(example))}</code>" if example else "")
                + f"</td><td>{statuses}</td></tr>"
            )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(doc['info']['title'])} API</title>"
        '<link rel=stylesheet href="/static/dashboard.css"></head><body><main>'
        f"<h1>{e(doc['info']['title'])} API {e(doc['info']['version'])}</h1>"
        f"<p>{e(doc['info']['description'])} The machine-readable document is "
        '<a href="/openapi.json">/openapi.json</a>; the dashboard is <a href="/">/</a>.</p>'
        "<table class=ops><thead><tr><th>method</th><th>path</th><th>what</th>"
        "<th>statuses</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        "</main></body></html>"
    )
