"""The daemon's log: what asyncio, warnings and dying threads say comes out as JSON too."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, threading, warnings
    from queuectld.logs import configure_logging

    configure_logging("info", "json")

    async def fails():
        raise ValueError("nobody awaited me")

    async def main():
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)  # a callback that raises
        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0.01)
        del task  # its exception was never retrieved: asyncio reports it when collected
        gc.collect()

    asyncio.run(main())
    warnings.warn("something is deprecated", DeprecationWarning)
    thread = threading.Thread(target=lambda: {}["missing"], name="store-like")
    thread.start()
    thread.join()
    """
)


def test_asyncio_errors_warnings_and_thread_deaths_are_json_lines() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines, "nothing was logged"
    events = [json.loads(line) for line in lines]  # every line is JSON, no bare traceback
    by_event: dict[str, list[dict[str, object]]] = {}
    for event in events:
        assert {"timestamp", "level", "event"} <= event.keys(), event
        by_event.setdefault(str(event["event"]), []).append(event)
    asyncio_errors = by_event["asyncio_error"]
    assert all(e["level"] == "error" for e in asyncio_errors)
    texts = " ".join(f"{e['message']} {e.get('exception', '')}" for e in asyncio_errors)
    assert "ZeroDivisionError" in texts
    assert "never retrieved" in texts and "nobody awaited me" in texts
    (warning,) = by_event["python_warning"]
    assert warning["level"] == "warning" and "something is deprecated" in str(warning["message"])
    (died,) = by_event["thread_failed"]
    assert died["thread"] == "store-like" and "KeyError" in str(died["exception"])
