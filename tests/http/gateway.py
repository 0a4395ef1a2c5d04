"""A real ``queuectl http`` process in front of a test daemon (no mocks, no in-process app).

:class:`Gateway` starts the real command with the daemon's environment on a free
loopback port, waits until it answers, and offers ``request()`` (http.client, one
connection a call), ``json()`` and ``curl()`` (the real curl, as the seed runs it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import QueueDaemon, queuectl_command, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class Gateway:
    """One ``queuectl http`` for ``daemon``; ``env`` adds variables (a token, say)."""

    def __init__(
        self,
        daemon: QueueDaemon,
        listen_host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        config: Path | None = None,
    ) -> None:
        self.daemon = daemon
        self.port = free_port()
        self.listen = f"{listen_host}:{self.port}"
        self.host = "127.0.0.1"
        self.env = dict(env or {})
        self.config = config
        self.stderr_path = daemon.home / f"http-{self.port}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [*queuectl_command(), "http", "--listen", self.listen]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    def start(self) -> Gateway:
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.daemon.cli_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        wait_for(self._answers, timeout=30, what=f"queuectl http on {self.url}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"queuectl http exited {self.proc.returncode}: {self.stderr()}")
        with contextlib.suppress(OSError):
            socket.create_connection((self.host, self.port), timeout=1).close()
            return True
        return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def audit(self) -> list[dict[str, Any]]:
        """The gateway's audit lines (mutating requests) so far."""
        out = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") == "http_request":
                    out.append(event)
        return out

    # -- talking to it ------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Answer:
        """One request on a fresh connection; ``body`` is sent as JSON, ``raw`` as is."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            sent = dict(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """A request that must answer ``status``; its JSON body."""
        answer = self.request(method, path, body)
        assert answer.status == status, (answer.status, answer.body)
        return answer.json

    def curl(self, *args: str) -> str:
        """``curl -s ARGS`` with the seed's URL rewritten to this gateway's port."""
        tool = shutil.which("curl")
        assert tool is not None, "curl is not installed"
        fixed = [a.replace("http://127.0.0.1:8080", self.url) for a in args]
        result = subprocess.run(
            [tool, "-s", "-S", "--fail-with-body", *fixed],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )
        assert result.returncode == 0, (fixed, result.stdout, result.stderr)
        return result.stdout
