"""A private, throw-away PostgreSQL server for tests that restart or break the database.

The shared server at 127.0.0.1:5432 (``tests/pg.py``) serves every test that does not
hurt the database. Tests that restart PostgreSQL, kill its backends or fill its
connection slots get one of these instead: a fresh data directory under /tmp, trust
authentication, 127.0.0.1 on a free port plus its own Unix socket directory, small
settings (``max_connections`` 20)::

    pg = PrivatePostgres()
    pg.start()
    url = pg.url                    # postgresql://postgres@127.0.0.1:PORT/postgres
    pg.restart(mode="immediate")    # a crash-like restart on the same port
    pg.terminate_backends("queuectld")
    with pg.fill_connections():     # new connections are refused meanwhile
        ...
    pg.cleanup()                    # stop it and remove the data directory

``initdb`` refuses to run as root, so as root the server's programs run as the
``postgres`` user (``runuser -u postgres --``), which owns the temporary directory.
The binaries are found in the newest ``/usr/lib/postgresql/<version>/bin`` (or
``$QUEUECTL_TEST_PG_BINDIR``, or ``pg_config --bindir``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors

MAX_CONNECTIONS = 20
START_TIMEOUT_S = 60
# The application_name of the connections this class opens, so they can be told apart
# from the daemons' connections (and spared) when terminating backends.
ADMIN_APP = "queuectl-test-pgserver"


class StopMode(StrEnum):
    """How ``pg_ctl stop`` ends the server (``smart`` would wait for every client)."""

    FAST = "fast"  # roll back open transactions, disconnect clients, clean shutdown
    IMMEDIATE = "immediate"  # no shutdown checkpoint: crash recovery at the next start


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version)."""
    override = os.environ.get("QUEUECTL_TEST_PG_BINDIR")
    if override:
        return Path(override)
    root = Path("/usr/lib/postgresql")
    versions = []
    if root.is_dir():
        for entry in root.iterdir():
            if re.fullmatch(r"\d+(\.\d+)?", entry.name) and (entry / "bin" / "initdb").exists():
                versions.append((float(entry.name), entry / "bin"))
    if versions:
        return max(versions)[1]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    raise PostgresNotFound(
        "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin "
        "or by pg_config; install the postgresql package or set QUEUECTL_TEST_PG_BINDIR"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HeldConnections:
    """The connections :meth:`PrivatePostgres.fill_connections` holds."""

    conns: list[psycopg.Connection[tuple[object, ...]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.conns)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()
        self.conns.clear()


class PrivatePostgres:
    """One PostgreSQL server of its own: start, stop, restart, break it, throw it away."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self.bindir = find_bindir()
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="qc-pg-", dir="/tmp"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self.port = 0
        self.starts = 0
        self._as_postgres = os.geteuid() == 0
        self._initialised = False

    # -- running the server's programs ------------------------------------------

    def _run(
        self, *argv: str, timeout: float = START_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the server's programs (as ``postgres`` when we are root)."""
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}\nserver log (tail):\n{self.log_tail()}"
            )
        return proc

    def _init(self) -> None:
        if self._as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresNotFound(
                    "running as root, but there is no 'postgres' user to run initdb as"
                ) from exc
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.socket_dir.mkdir()
        if self._as_postgres:
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        # --no-sync: a throw-away cluster need not survive a power cut before its first start.
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.port = free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(self.max_connections),
            # Every test connection is a superuser: reserve nothing, so that holding
            # max_connections connections really leaves no slot for anyone.
            "superuser_reserved_connections": "0",
            "shared_buffers": "16MB",
            "max_wal_size": "64MB",
            "logging_collector": "off",
            "log_connections": "off",
            "log_min_messages": "warning",
        }
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# queuectl tests (tests/pgserver.py)\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        self._initialised = True

    # -- life -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL the daemons and tests connect with (TCP, trust, database postgres)."""
        assert self.port, "the server was never started"
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def running(self) -> bool:
        """True if the server answers a connection now."""
        try:
            with self.connect(connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def start(self) -> None:
        """Start the server (initialising it the first time); return once it answers."""
        if not self._initialised:
            self._init()
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )
        self.starts += 1

    def stop(self, mode: StopMode | str = StopMode.FAST) -> None:
        """Stop the server (``fast``: clean; ``immediate``: like a crash)."""
        mode = StopMode(mode)
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode.value, "-w", "stop")

    def restart(self, mode: StopMode | str = StopMode.FAST) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop(mode)
        self.start()

    @contextlib.contextmanager
    def down(self, mode: StopMode | str = StopMode.FAST) -> Iterator[None]:
        """The server is stopped inside the block and started again after it."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    def cleanup(self) -> None:
        """Stop the server if it runs (immediately: nothing here is worth a checkpoint)
        and remove its directory."""
        if self._initialised and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop(StopMode.IMMEDIATE)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- breaking it ------------------------------------------------------------

    def connect(self, connect_timeout: float = 10) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection of the test itself (spared by terminate_backends)."""
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, round(connect_timeout)),
            application_name=ADMIN_APP,
        )

    def backends(self, application_name: str | None = None) -> list[tuple[int, str]]:
        """(pid, application_name) of the client backends other than this class's own."""
        with self.connect() as conn:
            return _client_backends(conn, application_name)

    def terminate_backends(self, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every client backend whose application_name is
        ``application_name`` (all but this class's own when ``None``); the count."""
        with self.connect() as conn:
            return _terminate(conn, application_name)

    @contextlib.contextmanager
    def fill_connections(self, evict: bool = False) -> Iterator[HeldConnections]:
        """Hold every free connection slot inside the block, so new connections are
        refused ("too many clients already"); closed again after it.

        With ``evict``, also terminate every other client backend and take the slots
        they free (several rounds: their owners reconnect at the same time), so clients
        that kept connections lose them too.
        """
        held = HeldConnections()
        try:
            self._grab_all(held)
            if evict:
                # Until every slot is ours: owners reconnect at the same time, and a
                # terminated backend frees its slot only once it has exited.
                deadline = time.monotonic() + 15
                while len(held) < self.max_connections and time.monotonic() < deadline:
                    if not held.conns:
                        break  # others hold every slot: nothing to terminate them with
                    admin = held.conns[0]
                    if _client_backends(admin, None):
                        _terminate(admin, None)
                    else:
                        time.sleep(0.02)  # polling a slot free: nothing to wait on
                    self._grab_all(held)
            yield held
        finally:
            held.close()

    def _grab_all(self, held: HeldConnections) -> None:
        """Open connections until the server refuses one for want of slots."""
        while len(held) < self.max_connections:
            try:
                held.conns.append(self.connect(connect_timeout=5))
            except pg_errors.TooManyConnections:
                return
            except psycopg.OperationalError as exc:
                # Before PostgreSQL 16 the refusal may arrive as a plain
                # OperationalError; anything else is a real problem.
                if "too many clients" in str(exc) or "remaining connection slots" in str(exc):
                    return
                raise

    # -- looking at it ------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_up(self, timeout: float = 30.0) -> None:
        """Wait until the server answers (after a start by someone else)."""
        deadline = time.monotonic() + timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise AssertionError(f"private PostgreSQL not up after {timeout:g}s")
            time.sleep(0.1)


def _client_backends(
    conn: psycopg.Connection[tuple[object, ...]], application_name: str | None
) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT pid, application_name FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND application_name <> %s AND (%s::text IS NULL OR application_name = %s)",
        (ADMIN_APP, application_name, application_name),
    ).fetchall()
    return [(int(str(pid)), str(name)) for pid, name in rows]


def _terminate(conn: psycopg.Connection[tuple[object, ...]], application_name: str | None) -> int:
    pids = [pid for pid, _ in _client_backends(conn, application_name)]
    for pid in pids:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return len(pids)
