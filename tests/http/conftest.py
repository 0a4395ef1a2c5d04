"""Fixtures: ``gateway`` is a real ``queuectl http`` in front of the ``daemon`` fixture."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness import QueueDaemon
from tests.http.gateway import Gateway

GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(request: pytest.FixtureRequest) -> Iterator[GatewayFactory]:
    """``make(daemon, start=True, **kwargs)``: gateways (see :class:`Gateway`), stopped after."""
    made: list[Gateway] = []

    def make(daemon: QueueDaemon, start: bool = True, **kwargs: Any) -> Gateway:
        gw = Gateway(daemon, **kwargs)
        made.append(gw)
        return gw.start() if start else gw

    yield make
    call = getattr(request.node, "report_call", None)
    for gw in made:
        gw.stop()
        if call is not None and call.failed:
            print(f"--- queuectl http ({gw.url}) stderr ---\n{gw.stderr()[-4000:]}")


@pytest.fixture
def gateway(daemon: QueueDaemon, gateway_factory: GatewayFactory) -> Gateway:
    """A started gateway on a free loopback port, for the ``daemon`` fixture's daemon."""
    return gateway_factory(daemon)
