"""The OpenAPI document kept true: schemathesis against a live gateway and daemon.

Every operation of ``/openapi.json`` with every check schemathesis has (no 5xx, only
documented statuses, answers matching their schemas, valid input accepted, invalid
input refused, 405 with a true Allow header ...), bounded examples so that it stays
within a minute or two. Generated job commands are replaced by ``true`` before each
call (``st_hooks.py``): the contract is tested, random text is never run.

Left out, each for its reason:
- ``GET /events`` is an endless stream; tests/http/test_api.py reads it.
- ``PUT /config/{key}`` runs without the "valid input accepted" check: a setting's
  range depends on the key (max-retries 0-1000, default-timeout 0.001-604800 ...),
  which one path schema cannot say, so a value in the schema's range may be refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import QueueDaemon
from tests.http.gateway import Gateway

# Schemathesis over the HTTP API is about the gateway's contract, not the store, and is
# among the slowest tests: on SQLite only, to keep the suite in its time budget.
pytestmark = [
    pytest.mark.sqlite_only(reason="not about the store; suite time budget"),
    pytest.mark.timeout(600),
]

HERE = Path(__file__).resolve().parent
MAX_EXAMPLES = "15"
SETTING = "PUT /config/{key}"


def schemathesis(gateway: Gateway, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` on the gateway's document; its caches go to ``workdir``."""
    tool = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(tool), "--config-file", str(HERE / "schemathesis.toml"),
            "run", f"{gateway.url}/openapi.json",
            "--max-examples", MAX_EXAMPLES, "--workers", "1", "--no-color",
            "--exclude-path", "/events", "--request-timeout", "30",
            "--generation-allow-x00", "false",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=workdir,
        env={**gateway.daemon.cli_env(), "SCHEMATHESIS_HOOKS": "st_hooks",
             "PYTHONPATH": str(HERE)},
    )  # fmt: skip
    summary = result.stdout[result.stdout.find("SUMMARY") :]
    print(f"\nschemathesis {' '.join(args)}\n{summary}")
    return result


def failures(result: subprocess.CompletedProcess[str]) -> str:
    """What schemathesis found (each failure with its curl reproduction), for the assert."""
    out = result.stdout
    start = out.find("FAILURES")
    return (out[start : start + 12000] if start >= 0 else out[-6000:]) + result.stderr[-2000:]


def test_every_operation_keeps_its_contract(
    daemon: QueueDaemon, gateway: Gateway, tmp_path: Path
) -> None:
    result = schemathesis(gateway, tmp_path, "--exclude-name", SETTING)
    assert result.returncode == 0, failures(result)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested and int(tested.group(1)) >= 20, result.stdout[-3000:]
    assert gateway.running()


def test_setting_operation_keeps_its_contract(
    daemon: QueueDaemon, gateway: Gateway, tmp_path: Path
) -> None:
    result = schemathesis(
        gateway,
        tmp_path,
        "--include-name",
        SETTING,
        "--exclude-checks",
        "positive_data_acceptance",
    )
    assert result.returncode == 0, failures(result)
