"""The HTTP gateway: the seed's REST API, OpenAPI, Prometheus metrics and a dashboard.

A client of the daemon's socket like the CLI (every request goes through
:class:`queuectl.client.Client`); it never opens the store. Optional: install the
``http`` extra (``pip install 'queuectl[http]'``) and run ``queuectl http``.

- :mod:`.operations` — the one table: route → Client call → statuses.
- :mod:`.problems`   — daemon error codes → HTTP statuses, problem+json bodies.
- :mod:`.openapi`    — the OpenAPI document and the ``/docs`` page, built from the table.
- :mod:`.upstream`   — per-thread socket clients and the shared event subscription.
- :mod:`.metrics`    — the Prometheus registry (``prometheus_client``).
- :mod:`.guard`      — token, Origin check, body limit, audit log.
- :mod:`.settings`   — listen address, token and limits from file and environment.
- :mod:`.app`        — the Starlette application; :mod:`.serve` runs it under uvicorn.
"""
