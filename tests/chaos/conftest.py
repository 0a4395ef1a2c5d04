"""Fixtures and options of the chaos suite (independent of tests/conftest.py).

    pytest tests/chaos                  # the CI subset (about 3 minutes on 2 cores)
    pytest tests/chaos --rounds 50      # more daemon kills in the crash campaign
    pytest tests/chaos --long           # the long campaign: 200 rounds, 1,000 durable acks

(``--rounds`` is registered here, so name ``tests/chaos`` on the command line.)

Each test prints its numbers in the terminal summary ("chaos report").
Set CHAOS_KEEP=1 to keep the scratch directories (daemon log, queue.db) for a post-mortem.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.chaoslib import ChaosOptions, DaemonProcess

_REPORT: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "queuectl chaos suite")
    group.addoption(
        "--rounds",
        type=int,
        default=None,
        help="daemon kills in the crash campaign (default 20; 200 with --long)",
    )
    try:
        group.addoption(
            "--long",
            action="store_true",
            default=False,
            help="long campaigns: 200 kill rounds, 1,000 durable-ack repetitions",
        )
    except ValueError:
        pass  # tests/conftest.py has --long already (it also runs tests marked slow)


def _option(config: pytest.Config, name: str, default: Any) -> Any:
    try:
        value = config.getoption(name)
    except ValueError:  # options not registered (conftest loaded late): defaults
        return default
    return default if value is None else value


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long campaigns run past the suite's 300 s per-test timeout: give them an hour."""
    if not _option(config, "--long", False):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.timeout(3600))


@pytest.fixture(scope="session")
def chaos_options(request: pytest.FixtureRequest) -> ChaosOptions:
    long = bool(_option(request.config, "--long", False))
    rounds = int(_option(request.config, "--rounds", None) or (200 if long else 20))
    return ChaosOptions(
        long=long,
        rounds=rounds,
        jobs=max(2000, rounds * 50),
        ack_reps=1000 if long else 50,
    )


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short scratch directory (Unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qc-chaos-"))
    yield path
    if not os.environ.get("CHAOS_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, scratch: Path) -> Iterator[dict[str, str]]:
    """The variables that put a daemon on one backend (ids ``[sqlite]``, ``[postgres]``).

    SQLite: none (queue.db in the home). PostgreSQL: a fresh schema of the test server
    (fails, not skips, when it is down) and a fixed node_id, so that a restarted daemon
    takes back the leases of the one that was killed. Request it before ``make_daemon``:
    the schema is dropped after the daemons are gone.
    """
    if request.param == "sqlite":
        yield {}
        return
    from tests.pg import PG_URL, pg_schema

    with pg_schema() as schema:
        yield {
            "QUEUECTLD_STORE_URL": PG_URL,
            "QUEUECTLD_STORE_SCHEMA": schema,
            "QUEUECTLD_NODE_ID": f"chaos-{scratch.name}",
        }


@pytest.fixture
def make_daemon(scratch: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Build daemons over scratch homes; every one (and all it started) is ended after."""
    made: list[DaemonProcess] = []

    def make(
        name: str = "home", env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> DaemonProcess:
        daemon = DaemonProcess(scratch / name, env=env, args=args)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Add a line to the chaos report printed at the end of the run."""

    def add(line: str) -> None:
        _REPORT.append(f"{request.node.name}: {line}")
        print(line)

    return add


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist (make test runs -n 2) the lines were written in a worker: hand
    # them to the controller, where tests/conftest.py prints them (the controller
    # collects nothing, so it may never load this file).
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["chaos_report"] = list(_REPORT)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("chaos report")
        for line in _REPORT:
            terminalreporter.write_line(line)
