"""Fixtures of the cluster suite: several daemons on one PostgreSQL store.

``private_pg``
    A :class:`~tests.pgserver.PrivatePostgres` for the whole session: a throw-away
    server of its own (never the shared one at 5432) that tests may restart, whose
    backends they may terminate and whose connection slots they may fill.

``fault_pg``
    ``private_pg``, started if a test left it down, before and after each test.

``cluster_factory``
    ``make(url=PG_URL, **settings)`` -> a :class:`~tests.cluster.clusterlib.Cluster` on
    a fresh schema of ``url`` (the shared server unless a test passes
    ``fault_pg.url``); its daemons are stopped and the schema dropped afterwards.
    A failed test prints the tail of each daemon's log.

``cluster_report``
    ``cluster_report(line)`` (also ``Cluster.report``): a measurement (drain time,
    rescue time, pickup latency, outage length) printed in the "cluster report"
    section at the end of the run, also under pytest-xdist.

    pytest tests/cluster              # about 3 minutes on 2 cores
    QUEUECTL_TEST_KEEP=1 pytest ...   # keep the daemons' homes for a post-mortem
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.clusterlib import Cluster
from tests.pg import PG_URL, pg_schema
from tests.pgserver import PrivatePostgres
from tests.runreport import CLUSTER

ClusterFactory = Callable[..., Cluster]
Report = Callable[[str], None]


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server for the session (fails, not skips, without binaries)."""
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture
def fault_pg(private_pg: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private server, up at the start and again at the end of the test."""
    if not private_pg.running():
        private_pg.start()
    yield private_pg
    if not private_pg.running():
        private_pg.start()


@pytest.fixture
def cluster_factory(
    request: pytest.FixtureRequest, cluster_report: Report
) -> Iterator[ClusterFactory]:
    """``make(url=PG_URL, **settings)``: clusters on fresh schemas, cleaned up after."""
    made: list[Cluster] = []
    schemas = contextlib.ExitStack()

    def make(url: str = PG_URL, **settings: Any) -> Cluster:
        schema = schemas.enter_context(pg_schema(url))
        cluster = Cluster(url, schema, settings, report=cluster_report)
        made.append(cluster)
        return cluster

    with schemas:  # dropped once the daemons using them have stopped
        yield make
        call = getattr(request.node, "report_call", None)
        failed = call is not None and call.failed
        for cluster in made:
            cluster.cleanup(failed=failed)


@pytest.fixture
def cluster_report(request: pytest.FixtureRequest) -> Report:
    """Add a line to the cluster report printed at the end of the run."""
    return CLUSTER.adder(request)


def pytest_sessionfinish(session: pytest.Session) -> None:
    CLUSTER.hand_over(session)  # tests/conftest.py prints it
