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

ClusterFactory = Callable[..., Cluster]
Report = Callable[[str], None]

_REPORT: list[str] = []


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

    def add(line: str) -> None:
        _REPORT.append(f"{request.node.name}: {line}")
        print(line)

    return add


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist the lines were written in a worker: hand them to the controller,
    # where tests/conftest.py prints them (the controller collects nothing, so it may
    # never load this file).
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["cluster_report"] = list(_REPORT)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("cluster report")
        for line in _REPORT:
            terminalreporter.write_line(line)
