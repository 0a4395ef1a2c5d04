"""Lines some tests print at the end of the run ("chaos report", "cluster report").

A test adds lines through its conftest's fixture; tests/conftest.py prints every report
in the terminal summary. Under pytest-xdist (``make test`` runs ``-n 2``) the lines are
written in a worker: each worker hands them to the controller when it finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class RunReport:
    """One titled list of lines, shared by the conftest that writes it and the one that
    prints it (module-level objects: the same in every conftest of one process)."""

    def __init__(self, key: str) -> None:
        self.key = key  # also the name under which a worker hands the lines over
        self.lines: list[str] = []

    def adder(self, request: pytest.FixtureRequest) -> Callable[[str], None]:
        """A function that adds a line, named after the test, and prints it too."""

        def add(line: str) -> None:
            self.lines.append(f"{request.node.name}: {line}")
            print(line)

        return add

    def hand_over(self, session: pytest.Session) -> None:
        """In an xdist worker: pass the lines to the controller (else nothing)."""
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[self.key] = list(self.lines)

    def take_from(self, node: Any) -> None:
        """In the xdist controller: the lines a finished worker handed over."""
        self.lines.extend(getattr(node, "workeroutput", {}).get(self.key, []))

    def print(self, terminalreporter: Any) -> None:
        if self.lines:
            terminalreporter.section(self.key.replace("_", " "))
            for line in self.lines:
                terminalreporter.write_line(line)


CHAOS = RunReport("chaos_report")
CLUSTER = RunReport("cluster_report")
REPORTS = (CHAOS, CLUSTER)
