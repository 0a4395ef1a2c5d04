"""schemathesis hooks for tests/http/test_contract.py (loaded through SCHEMATHESIS_HOOKS).

Generated jobs would run random text as shell commands once a generated request
starts workers; each valid command is replaced by ``true`` just before the call, so
the contract is tested on every field while nothing random is ever executed.
"""

from __future__ import annotations

from typing import Any

import schemathesis

SAFE_COMMAND = "true"


def _valid_command(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\x00" not in value


def _defuse(job: Any) -> None:
    if isinstance(job, dict) and _valid_command(job.get("command")):
        job["command"] = SAFE_COMMAND


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    if isinstance(body, dict):
        _defuse(body)
        jobs = body.get("jobs")
        if isinstance(jobs, list):
            for job in jobs:
                _defuse(job)
