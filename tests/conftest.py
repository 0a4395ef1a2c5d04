"""Shared fixtures: a real ``queuectld`` in a temporary directory.

``daemon``
    A started :class:`~tests.harness.QueueDaemon` (foreground ``queuectld --home TMP
    --log-format json``, READY awaited over ``--ready-fd``) with a fresh home under
    ``/tmp`` (short, so the socket path fits AF_UNIX). Stopped with SIGTERM at
    teardown; processes it left behind are killed; the home is then removed::

        def test_enqueue(daemon: QueueDaemon) -> None:
            daemon.cli("enqueue", "--id", "a", "--", "true")
            daemon.cli("worker", "start", "--count", "1")
            daemon.wait_for_state("a", "completed")

    Helpers: ``run(*args)`` / ``cli(*args)`` / ``cli_json(*args)`` (the real ``queuectl``
    with ``QUEUECTL_HOME`` set and autostart off), ``client()``, ``restart()``,
    ``kill9()``, ``stop()``, ``start()``, ``wait_for_state()``, ``watch_until_idle()``,
    ``job_log()``, ``log_events()``; ``wait_for()`` is in ``tests.harness``.

``@pytest.mark.daemon_config(key=value, ...)``
    Daemon settings for the ``daemon`` fixture of that test, passed as
    ``QUEUECTLD_<KEY>`` variables, e.g. ``@pytest.mark.daemon_config(kill_grace=1)``.

``daemon_factory``
    ``daemon_factory(start=True, **settings)`` makes more daemons (each with its own
    home), all cleaned up like ``daemon``.

Both store backends: every test that uses ``daemon`` or ``daemon_factory`` runs once
per entry of :data:`BACKENDS` (ids ``test_x[sqlite]``, ``test_x[postgres]``). A
PostgreSQL daemon gets a fresh schema of the shared test server (``tests/pg.py``;
it fails, not skips, when PostgreSQL is down) and a ``node_id`` of its own; settings
that name ``store_url`` themselves (daemons sharing one store) are left alone.
``@pytest.mark.sqlite_only(reason="...")`` keeps a test (or module) on SQLite: for
tests about the SQLite file itself, saying why (``postgres_only`` likewise).

``--long`` runs the tests marked ``slow`` (skipped by default). ``QUEUECTL_TEST_KEEP=1``
keeps the daemons' home directories (queue.db, logs, ``queuectld.stderr``) for a look
afterwards; a failed test prints the tail of its daemon's log either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Generator, Iterator
from typing import Any

import hypothesis
import pytest

from tests.harness import QueueDaemon, short_tmpdir

DaemonFactory = Callable[..., QueueDaemon]

# The stores every daemon test runs on (see the module docstring).
BACKENDS = ["sqlite", "postgres"]

# The machine running the suite may be busy: no per-example deadline, no speed health check.
hypothesis.settings.register_profile(
    "queuectl", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("queuectl")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="also run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daemon_config(**settings): QUEUECTLD_* settings for the daemon fixture"
    )
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): run the daemon fixtures on SQLite only (about the SQLite file)",
    )
    config.addinivalue_line(
        "markers", "postgres_only(reason): run the daemon fixtures on PostgreSQL only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every daemon test once per backend, unless marked ``sqlite_only`` or
    ``postgres_only``."""
    if "daemon_backend" not in metafunc.fixturenames:
        return
    backends = BACKENDS
    for only in ("sqlite", "postgres"):
        marker = metafunc.definition.get_closest_marker(f"{only}_only")
        if marker is None:
            continue
        if not (marker.kwargs.get("reason") or marker.args):
            nodeid = metafunc.definition.nodeid
            raise pytest.UsageError(f"{nodeid}: {only}_only needs a reason")
        backends = [only]
    metafunc.parametrize("daemon_backend", backends, indirect=True, scope="function")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="slow: run with --long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Chaos report lines of pytest-xdist workers (tests/chaos/conftest.py), for the summary.
_WORKER_REPORTS: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: a worker has finished; keep the chaos report lines it wrote."""
    _WORKER_REPORTS.extend(getattr(node, "workeroutput", {}).get("chaos_report", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _WORKER_REPORTS:
        terminalreporter.section("chaos report")
        for line in _WORKER_REPORTS:
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report on the item, so fixtures can tell a failed test at teardown.
    report: pytest.TestReport = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def daemon_backend(request: pytest.FixtureRequest) -> str:
    """The store of this test's daemons: "sqlite" or "postgres" (from pytest_generate_tests)."""
    return str(request.param)


@pytest.fixture
def daemon_factory(request: pytest.FixtureRequest, daemon_backend: str) -> Iterator[DaemonFactory]:
    """``make(start=True, **settings)``: daemons with their own homes, all cleaned up after."""
    made: list[QueueDaemon] = []
    schemas = contextlib.ExitStack()

    def make(start: bool = True, **config: Any) -> QueueDaemon:
        home = short_tmpdir()
        if daemon_backend == "postgres" and "store_url" not in config:
            from tests.pg import PG_URL, pg_schema

            schema = schemas.enter_context(pg_schema())
            config = {"store_url": PG_URL, "store_schema": schema, **config}
        if str(config.get("store_url", "")).startswith("postgres"):
            # Leases are owned by node_id: daemons sharing a store must not share one.
            config.setdefault("node_id", f"test-{home.name}")
        d = QueueDaemon(home, config)
        made.append(d)
        if start:
            d.start()
        return d

    with schemas:  # dropped after the daemons that use them have stopped
        yield make
        call = getattr(request.node, "report_call", None)
        for d in made:
            d.cleanup()
            if call is not None and call.failed:
                # Shown under "Captured stdout teardown" of the failed test.
                tail = "\n".join(d.stderr_text().splitlines()[-80:])
                print(f"--- queuectld log ({d.home}, {d.starts} starts), last lines ---\n{tail}")
            if not os.environ.get("QUEUECTL_TEST_KEEP"):
                shutil.rmtree(d.home, ignore_errors=True)


@pytest.fixture
def daemon(request: pytest.FixtureRequest, daemon_factory: DaemonFactory) -> QueueDaemon:
    """A started queuectld in a fresh home (settings from ``@pytest.mark.daemon_config``)."""
    config: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("daemon_config"))):
        config.update(marker.kwargs)
    return daemon_factory(**config)
