"""``queuectld`` command line: the only place for argv, sys.exit and DaemonContext."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from queuectl.errors import InvalidRequest
from queuectld import __version__, cgroup
from queuectld.config import ConfigError, DaemonConfig, explain_config, load_config, render_toml

# Exit status for an unusable configuration (and argparse's for bad flags): the unit's
# RestartPreventExitStatus=2 keeps systemd from restarting into the same mistake.
EXIT_CONFIG = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="queuectld",
        description="The queuectl daemon: owns the job queue and supervises the workers.",
    )
    p.add_argument("--config", help="TOML configuration file (default: $QUEUECTLD_CONFIG)")
    p.add_argument("--home", help="state directory for the per-user defaults (~/.queuectl)")
    p.add_argument("--socket", help="control socket path")
    p.add_argument("--database", "--db", dest="database", help="queue database path")
    p.add_argument(
        "--store-url", help="postgresql://... to share a PostgreSQL store (default: SQLite)"
    )
    p.add_argument("--store-schema", help="the PostgreSQL schema of the queue (queuectl)")
    p.add_argument("--log-dir", help="directory of job output files")
    p.add_argument("--log-file", help="also write the daemon's own log to this file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "console"])
    p.add_argument("--workers", type=int, help="worker count until `worker start` sets one")
    p.add_argument("--daemon", action="store_true", help="detach into the background")
    p.add_argument(
        "--pidfile", help="with --daemon: write the pid here (default <home>/queuectld.pid)"
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration (file, environment, flags), print what is wrong "
        "with its line, and exit: 0 if usable, 2 if not",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML, each value's source as a comment",
    )
    p.add_argument("--version", action="version", version=f"queuectld {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flags = {
        "home": args.home,
        "socket": args.socket,
        "database": args.database,
        "store_url": args.store_url,
        "store_schema": args.store_schema,
        "log_dir": args.log_dir,
        "log_file": args.log_file,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "workers": args.workers,
    }
    try:
        explained = explain_config(args.config, os.environ, flags)
    except ConfigError as exc:
        from queuectld.logs import stderr_is_journal

        prefix = "<3>" if stderr_is_journal() else ""  # journald: priority "error"
        for problem in exc.problems:
            print(f"{prefix}queuectld: {problem}", file=sys.stderr)
        if args.check_config:
            print("configuration NOT OK", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except InvalidRequest as exc:
        print(f"queuectld: {exc.message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    config = explained.config
    if "log_format" not in explained.origins and not args.daemon and _stderr_is_terminal():
        # Nobody chose a format and a person reads stderr: lines for people, not JSON.
        config = dataclasses.replace(config, log_format="console")
    if args.check_config:
        for warning in explained.warnings:
            print(f"queuectld: warning: {warning}", file=sys.stderr)
        print(f"configuration OK ({explained.path or 'no configuration file'})")
        sys.exit(0)
    if args.print_config:
        sys.stdout.write(render_toml(explained))
        found = cgroup.discover(config.cgroup, config.store_key())
        sys.stdout.write(f"# containment: {found.describe()}\n")
        sys.exit(0)
    try:
        Path(config.home).mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        print(f"queuectld: cannot create the home {config.home}: {exc.strerror}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.daemon:
        # Detached, stderr is gone: say now, as the foreground form does, what stops us.
        in_use = _in_use(config)
        if in_use is not None:
            print(f"queuectld: {in_use}", file=sys.stderr)
            sys.exit(1)
        _detach(config, args.pidfile, args.ready_fd)
    if "ssl" not in sys.modules:
        # The daemon speaks no TLS. Kept from importing ssl, asyncio does not map
        # OpenSSL: about 4.5 MB less resident memory in a process that runs for months.
        sys.modules["ssl"] = None  # type: ignore[assignment]
    from queuectld.daemon import run_daemon
    from queuectld.logs import configure_logging

    configure_logging(config.log_level, config.log_format, config.log_file or None)
    if explained.warnings:
        import structlog

        for warning in explained.warnings:
            structlog.get_logger("queuectld").warning(
                "config_warning", where=warning.where, problem=warning.message
            )

    def reload() -> DaemonConfig:
        """SIGHUP: read the same file again, under the same environment and flags."""
        return load_config(args.config, os.environ, flags)

    sys.exit(run_daemon(config, args.ready_fd, reload))


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def _in_use(config: DaemonConfig) -> str | None:
    """Why another daemon keeps this one from starting (its store or socket), or None.

    Only a check: the daemon takes the store's lock itself once detached.
    """
    import fcntl
    import socket

    try:
        fd = os.open(config.lock_path(), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        fd = None  # no lock file yet: no daemon has used this store
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"another queuectld is using {config.lock_subject()}; stop it first"
        finally:
            os.close(fd)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(config.socket)
    except OSError:
        return None
    finally:
        probe.close()
    return f"another queuectld is already listening on {config.socket}"


def _detach(config: DaemonConfig, pidfile: str | None, ready_fd: int | None) -> None:
    """Become a background daemon (python-daemon): double fork, setsid, umask, stdio closed."""
    import daemon

    lock = FlockPidFile(pidfile or str(Path(config.home) / "queuectld.pid"))
    context = daemon.DaemonContext(
        working_directory=config.home,
        umask=0o077,
        pidfile=lock,
        files_preserve=[ready_fd] if ready_fd is not None else None,
        detach_process=True,
    )
    context.open()


class FlockPidFile:
    """A pidfile held with flock: a crashed daemon's file is stale, never a blocker."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> FlockPidFile:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SystemExit(f"queuectld: another daemon holds {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


if __name__ == "__main__":
    main()
