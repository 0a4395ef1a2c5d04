"""``queuectl http``: run the gateway under uvicorn until SIGTERM or Ctrl+C."""

from __future__ import annotations

import logging
import sys

import structlog
import uvicorn

from queuectl.http.app import create_app
from queuectl.http.settings import GatewaySettings

# Open event streams never end by themselves: give them this long after SIGTERM.
GRACEFUL_S = 3


def configure_logging() -> None:
    """JSON lines on stderr, one event a line (journald keeps them), like queuectld's."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def run(settings: GatewaySettings, autostart: bool | None = None) -> None:
    """Serve until stopped."""
    configure_logging()
    log = structlog.get_logger("queuectl.http")
    log.info(
        "http_listening",
        url=settings.url,
        token_required=settings.token is not None,
        socket=settings.socket,
    )
    uvicorn.run(
        create_app(settings, autostart),
        host=settings.host,
        port=settings.port,
        log_level=logging.WARNING,
        access_log=False,  # mutating requests are audited by the guard; reads are not logged
        timeout_graceful_shutdown=GRACEFUL_S,
        server_header=False,
        proxy_headers=False,  # the peer address in the audit log is the real one
    )
