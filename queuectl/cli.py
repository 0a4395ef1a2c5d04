"""``queuectl``: parse -> one Client call -> render. Exit statuses live in :func:`main`
(and, for ``wait``, in :func:`wait_status`).

0 success; 1 the daemon refused the request (not found, duplicate id, invalid job)
or could not be reached; 2 misuse (bad flags, invalid JSON); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from queuectl import render, timespec
from queuectl.client import Client
from queuectl.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_WAIT_CANCELLED,
    EXIT_WAIT_DEAD,
    EXIT_WAIT_TIMEOUT,
    NoDaemon,
    QueuectlError,
    ShuttingDown,
    Unavailable,
)
from queuectl.protocol import (
    MAX_BATCH_JOBS,
    MAX_CATCHUP_RUNS,
    MAX_COMMAND_BYTES,
    MAX_CPUS,
    MAX_LIST_LIMIT,
    MAX_PRIORITY,
    MAX_PROCS_LIMIT,
    MAX_PURGE_AGE_S,
    MAX_RETRIES_LIMIT,
    MAX_TIMEOUT_S,
    MAX_WORKERS,
    MIN_PRIORITY,
    PURGEABLE_STATES,
    CatchUp,
    JobState,
    Overlap,
    SortKey,
    WaitView,
    plain_number,
)

F = TypeVar("F", bound=Callable[..., Any])

STATES = [s.value for s in JobState]
MAX_OFFSET = 2**62  # what the daemon accepts (msgpack carries at most 64 bits)


# The queue settings' defaults, for help texts (the daemon's table is
# queuectld.config.QUEUE_SETTINGS; tests/unit/test_cli_help.py checks they agree).
SETTINGS_HELP = {
    "max-retries": ("3", "retries after the first failure before the DLQ"),
    "backoff-base": ("2.0", "a retry waits backoff-base ** attempts seconds"),
    "backoff-max": ("3600.0", "the longest wait between retries, in seconds"),
    "jitter": ("0.0", "each retry delay varies by up to this fraction of itself"),
    "default-timeout": ("10.0", "seconds a job may run unless it sets its own timeout"),
    "max-interruptions": ("5", "crashes/drains a job may suffer before it is dead"),
}


class Int(click.IntRange):
    """click's integer range, minus Python's extras: ``1_0`` is not 10."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return super().convert(value, param, ctx)


class Number(click.FloatRange):
    """click's number range, minus ``1_0``, ``inf`` and ``nan``."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            text = value.strip()
            whole, _, frac = (text[1:] if text[:1] in "+-" else text).partition(".")
            digits = whole + frac
            if not (digits.isascii() and digits.isdigit()):
                self.fail(f"{value!r} is not a number such as 30 or 2.5", param, ctx)
        return super().convert(value, param, ctx)


class Duration(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """``30``, ``30s``, ``5m``, ``2h``, ``1d``: seconds (plain numbers are seconds)."""

    name = "duration"

    def __init__(self, high: float) -> None:
        self.high = high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            seconds = timespec.parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds > self.high:
            self.fail(f"{value!r} is longer than {plain_number(self.high)} seconds", param, ctx)
        return seconds


class PointInTime(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """An ISO 8601 time (local when it names no offset), as Unix time."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return timespec.parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class EnvPair(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """``KEY=VALUE`` for the job's environment."""

    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        name, sep, text = str(value).partition("=")
        if not sep or not name:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return name, text


class Context:
    """Options shared by every command."""

    def __init__(self, socket: str | None, autostart: bool | None) -> None:
        self.socket = socket
        self.autostart = autostart

    @contextmanager
    def client(self, autostart: bool | None = None) -> Iterator[Client]:
        off_by = "--no-autostart" if self.autostart is False else None
        if autostart is None:
            autostart = self.autostart
        with Client.connect(self.socket, autostart=autostart, off_by=off_by) as client:
            yield client


def wide_option(f: F) -> F:
    return click.option(
        "--wide", is_flag=True, help="full-width tables (default: fit the terminal or 80 columns)"
    )(f)


def table_width(wide: bool) -> int | None:
    """The width tables must fit: the terminal's (80 when not a terminal), or none."""
    if wide:
        return None
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((80, 24)).columns)
    return 80


pass_ctx = click.make_pass_decorator(Context)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for programs")(f)


def emit(value: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    click.echo(render.to_json(value) if as_json else human(value))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", envvar="QUEUECTL_SOCKET", help="daemon socket (default: per-user)")
@click.option(
    "--no-autostart",
    is_flag=True,
    default=None,
    help="do not start a per-user daemon when none answers (also QUEUECTL_NO_AUTOSTART=1)",
)
@click.version_option(package_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, socket: str | None, no_autostart: bool | None) -> None:
    """Run shell commands as background jobs, reliably."""
    ctx.obj = Context(socket, False if no_autostart else None)


# -- enqueue ---------------------------------------------------------------------


class _EnqueueCommand(click.Command):
    """Notes whether the job came after ``--``: then it is a shell command, never JSON."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["queuectl.after_dashes"] = "--" in args
        return super().parse_args(ctx, args)


def job_options(f: F) -> F:
    """The options of a job, shared by `enqueue` and `schedule add`."""
    options = [
        click.option(
            "--max-retries",
            type=Int(0, MAX_RETRIES_LIMIT),
            help=f"retries before the DLQ [default: the queue's max-retries, "
            f"{SETTINGS_HELP['max-retries'][0]}]",
        ),
        click.option(
            "--timeout",
            type=Number(0.001, MAX_TIMEOUT_S),
            help="seconds before the job is stopped [default: the queue's default-timeout, "
            f"{float(SETTINGS_HELP['default-timeout'][0]):g}]",
        ),
        click.option(
            "--priority",
            type=Int(MIN_PRIORITY, MAX_PRIORITY),
            help=f"higher runs first ({MIN_PRIORITY} to {MAX_PRIORITY}) [default: 0]",
        ),
        click.option(
            "--queue", "-q", "queue", help="the named queue to put it in [default: default]"
        ),
        click.option(
            "--env",
            "env",
            type=EnvPair(),
            multiple=True,
            help="set a variable in the job's environment (repeatable)",
        ),
        click.option(
            "--cwd",
            type=click.Path(file_okay=False),
            help="directory the job runs in [default: the current directory]",
        ),
        click.option(
            "--backoff-base",
            type=Number(1, 60),
            help="a retry waits backoff-base ** attempts seconds [default: the queue's setting]",
        ),
        click.option(
            "--backoff-max",
            type=Duration(MAX_TIMEOUT_S),
            help="the longest wait between retries [default: the queue's setting]",
        ),
        click.option(
            "--jitter",
            type=Number(0, 1),
            help="vary each retry delay by up to this fraction [default: the queue's setting]",
        ),
        click.option("--memory", help="memory limit, such as 512M or 2G (docs/jobs.md)"),
        click.option(
            "--cpus", type=Number(0.01, MAX_CPUS), help="CPU limit: 1.5 = one and a half CPUs"
        ),
        click.option(
            "--max-procs", type=Int(1, MAX_PROCS_LIMIT), help="limit on the job's processes at once"
        ),
        click.option(
            "--not-idempotent",
            is_flag=True,
            help="if a run is cut short (crash, drain), mark the job dead instead of running "
            "it again",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


JOB_OPTIONS = (
    "max_retries",
    "timeout",
    "priority",
    "queue",
    "env",
    "cwd",
    "backoff_base",
    "backoff_max",
    "jitter",
    "memory",
    "cpus",
    "max_procs",
    "not_idempotent",
)


def job_spec(command: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """The wire map of a job given as a command and the options of :func:`job_options`
    (plus `enqueue`'s own); options left out follow the queue's settings."""
    spec: dict[str, Any] = {"command": command[0] if len(command) == 1 else shlex.join(command)}
    for key, value in options.items():
        if key == "not_idempotent":
            if value:
                spec["idempotent"] = False
        elif key == "env":
            if value:
                spec["env"] = dict(value)
        elif key in ("after", "after_any"):
            if value:
                spec[key] = list(value)
        elif value is not None:
            spec[key] = value
    return spec


def job_cwd(cwd: str | None) -> str:
    """The directory a job runs in: ``--cwd`` made absolute, or the current one."""
    if cwd is None:
        return os.getcwd()
    cwd = os.path.abspath(cwd)
    if not os.path.isdir(cwd):
        raise click.BadParameter(f"{cwd} is not a directory", param_hint="'--cwd'")
    return cwd


@cli.command(cls=_EnqueueCommand, context_settings={"ignore_unknown_options": False})
@click.option("--id", "job_id", help="job id (default: a generated number)")
@job_options
@click.option(
    "--delay",
    type=Duration(MAX_TIMEOUT_S * 52),
    help="wait this long before the first run: 30 (seconds), 30s, 5m, 2h, 1d",
)
@click.option(
    "--run-at",
    type=PointInTime(),
    help="first run at this ISO 8601 time (2026-12-01T09:00:00Z; no offset: local time)",
)
@click.option(
    "--unique-key",
    help="while a job with this key is unfinished, return it instead of adding another",
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="ID",
    help="run once job ID completed; cancelled if it ends dead or cancelled (repeatable)",
)
@click.option(
    "--after-any",
    "after_any",
    multiple=True,
    metavar="ID",
    help="run once job ID is final, however it ended (repeatable)",
)
@click.option(
    "--file",
    "from_file",
    type=click.File("r"),
    help="enqueue every job of a JSON-lines file ('-' for stdin); up to "
    f"{MAX_BATCH_JOBS} jobs go in one transaction (all stored or none); a line's "
    '"after" may name a job of the same file by its "id"',
)
@json_option
@click.argument("command", nargs=-1, required=False)
@pass_ctx
def enqueue(
    c: Context,
    /,
    job_id: str | None,
    delay: float | None,
    run_at: float | None,
    unique_key: str | None,
    after: tuple[str, ...],
    after_any: tuple[str, ...],
    from_file: Any,
    as_json: bool,
    command: tuple[str, ...],
    **options: Any,
) -> None:
    """Add a job: a JSON object (or several, stored together), or flags and a command.

    \b
      queuectl enqueue '{"id":"job1","command":"echo Hello"}'
      queuectl enqueue '{"id":"a","command":"true"}' '{"id":"b","command":"true"}'
      queuectl enqueue --id job2 --timeout 30 -- sleep 2
      queuectl enqueue --queue mail --priority 10 --delay 5m -- ./send-digest
      queuectl enqueue --id load --after transform -- ./load.sh

    A command runs as `sh -c COMMAND` in the current directory (or --cwd); it may be up
    to {limit} KiB of UTF-8. Several words after `--` are joined as the shell reads them.
    """
    if delay is not None and run_at is not None:
        raise click.UsageError("give either --delay or --run-at, not both")
    cwd = job_cwd(options.pop("cwd"))
    if from_file is not None:
        if command:
            raise click.UsageError("give either --file or a job, not both")
        specs = [_parse_json_job(line, f"line {n}") for n, line in _lines(from_file)]
        if not specs:
            raise click.UsageError("the file holds no jobs")
        for spec in specs:
            spec.setdefault("cwd", cwd)
        with c.client() as client:
            ids: list[str] = []
            for start in range(0, len(specs), MAX_BATCH_JOBS):
                try:
                    ids += client.enqueue_batch(specs[start : start + MAX_BATCH_JOBS])
                except QueuectlError as exc:
                    if ids:  # earlier transactions are committed: say so
                        exc.message += f" (the file's first {len(ids)} jobs were enqueued)"
                    raise
        emit({"count": len(ids), "ids": ids}, as_json, lambda r: f"enqueued {r['count']} jobs")
        return
    if not command:
        raise click.UsageError("give a job as JSON or a command after `--`")
    own = {
        "id": job_id,
        "delay": delay,
        "run_at": run_at,
        "unique_key": unique_key,
        "after": after,
        "after_any": after_any,
    }
    after_dashes = click.get_current_context().meta.get("queuectl.after_dashes", False)
    if not after_dashes and command[0].lstrip().startswith("{"):
        # JSON jobs, never a shell command: each argument must be one JSON object.
        given = [v for v in [*own.values(), *options.values()] if v not in (None, ())]
        if any(v is not False for v in given):
            raise click.UsageError(
                "put the job's options (id, priority, queue, delay, env...) inside the JSON job"
            )
        if len(command) > MAX_BATCH_JOBS:
            raise click.UsageError(f"give at most {MAX_BATCH_JOBS} JSON jobs (or use --file)")
        if len(command) > 1:
            specs = [_parse_json_job(text, f"job {n}") for n, text in enumerate(command, 1)]
            for spec in specs:
                spec.setdefault("cwd", cwd)
            with c.client() as client:
                ids = client.enqueue_batch(specs)  # all or none
            emit(
                {"count": len(ids), "ids": ids},
                as_json,
                lambda r: f"enqueued {r['count']} jobs: {', '.join(r['ids'])}",
            )
            return
        spec = _parse_json_job(command[0], "the job")
    else:
        spec = job_spec(command, {**own, **options})
    spec.setdefault("cwd", cwd)
    with c.client() as client:
        job = client.enqueue_spec(spec)
    emit(job, as_json, render.enqueued)


enqueue.help = (enqueue.help or "").replace("{limit}", str(MAX_COMMAND_BYTES // 1024))


def _lines(fh: Any) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(fh, 1):
        if line.strip():
            yield n, line


def _parse_json_job(text: str, where: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(
            f"{where} is not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(spec, dict):
        raise click.UsageError(f'{where} must be a JSON object such as {{"command": "..."}}')
    return spec


# -- workers ---------------------------------------------------------------------


@cli.group()
def worker() -> None:
    """Start or stop the daemon's worker processes."""


@worker.command("start")
@click.option(
    "--count",
    type=Int(0, MAX_WORKERS),
    default=1,
    show_default=True,
    help="jobs that may run at once",
)
@click.option("--follow", is_flag=True, help="print job events until the queue is drained")
@click.option(
    "--attach",
    is_flag=True,
    help="run the workers for this terminal only: print job events; at the end of the "
    "queue or on Ctrl+C, set the workers back to what they were",
)
@pass_ctx
def worker_start(c: Context, count: int, follow: bool, attach: bool) -> None:
    """Run COUNT workers in the daemon.

    The daemon's workers are persistent: they keep running (and survive a daemon
    restart) until `queuectl worker stop`, whether or not this command is still
    running. `--follow` also prints job events until the queue is drained.

    `--attach` works like the seed's foreground workers: it prints the events, and when
    the queue is drained or you press Ctrl+C the daemon goes back to the worker count it
    had before (running jobs finish).
    """
    if follow and attach:
        raise click.UsageError("give --follow or --attach, not both")
    with c.client() as client:
        before = client.status()["workers"]["desired"]
        view = client.set_workers(count)
        click.echo(f"workers: {view['desired']} desired")
        if not attach:
            if follow:
                _follow(client, until_idle=True)
            return
        try:
            _follow(client, until_idle=True)
        finally:
            # Also after Ctrl+C: the interrupted connection may be mid-frame, use a new one.
            try:
                with c.client(autostart=False) as again:
                    restored = again.set_workers(before)
            except Unavailable:
                pass  # the daemon stopped (or is stopping): no workers to set back
            else:
                click.echo(f"workers: back to {restored['desired']} desired")


@worker.command("stop")
@pass_ctx
def worker_stop(c: Context) -> None:
    """Stop the workers gracefully: no new jobs; running jobs finish."""
    with c.client() as client:
        view = client.stop_workers()
    click.echo(f"workers stopping: {view['busy']} finishing their current job")


@cli.command()
@click.option("--until-idle", is_flag=True, help="stop once nothing is left to run")
@json_option
@pass_ctx
def watch(c: Context, until_idle: bool, as_json: bool) -> None:
    """Print job events as they happen, each with its local time.

    Ends (exit status 0) when the daemon stops, or with --until-idle once nothing is
    running, due or waiting for a retry (jobs scheduled for later are counted in the
    last line, not waited for). --json prints one JSON object a line.
    """
    with c.client() as client:
        _follow(client, until_idle, timed=True, as_json=as_json)


def _follow(client: Client, until_idle: bool, timed: bool = False, as_json: bool = False) -> None:
    stopped = False
    try:
        for event in client.watch(until_idle=until_idle):
            stopped = event.get("type") == "stopped"
            if as_json:
                click.echo(json.dumps(event, ensure_ascii=False))
                continue
            line = render.event_line(event)
            if line:
                click.echo(f"{render.clock(event.get('time'))} {line}" if timed else line)
    except QueuectlError:
        if not stopped:  # the daemon said it stops: its closing the connection is no error
            raise


# -- shell completion --------------------------------------------------------------


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (click's own).

    \b
      queuectl completion bash > ~/.local/share/bash-completion/completions/queuectl
      queuectl completion zsh > "${fpath[1]}/_queuectl"
      queuectl completion fish > ~/.config/fish/completions/queuectl.fish

    `make install-service` installs all three system-wide.
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the three choices are click's built-in shells
    click.echo(complete(cli, {}, "queuectl", "_QUEUECTL_COMPLETE").source())


# -- reading ---------------------------------------------------------------------


@cli.command()
@json_option
@pass_ctx
def status(c: Context, as_json: bool) -> None:
    """Job counts per state and the workers."""
    with c.client() as client:
        emit(client.status(), as_json, render.status)


@cli.command("list")
@click.option("--state", type=click.Choice(STATES), help="only jobs in this state")
@click.option("--queue", "-q", "queue", help="only jobs of this queue")
@click.option("--since", type=Duration(2**40), help="only jobs enqueued in the last 30m, 1h, 2d...")
@click.option("--limit", type=Int(1, MAX_LIST_LIMIT), default=100, show_default=True)
@click.option("--offset", type=Int(0, MAX_OFFSET), default=0)
@click.option(
    "--sort",
    type=click.Choice([k.value for k in SortKey]),
    default=SortKey.OLDEST.value,
    show_default=True,
    help="priority: the order the workers take them in; run_at: by due time",
)
@click.option("--newest", is_flag=True, help="newest first (the same as --sort newest)")
@click.option(
    "--blocked",
    is_flag=True,
    help="the jobs waiting for their parents, with what each waits on",
)
@wide_option
@json_option
@pass_ctx
def list_cmd(
    c: Context,
    state: str | None,
    queue: str | None,
    since: float | None,
    limit: int,
    offset: int,
    sort: str,
    newest: bool,
    blocked: bool,
    wide: bool,
    as_json: bool,
) -> None:
    """List jobs, oldest first (times are local; the zone is in the header)."""
    if newest:
        sort = SortKey.NEWEST.value
    if blocked:
        if state not in (None, JobState.BLOCKED.value):
            raise click.UsageError("--blocked lists blocked jobs: give no other --state")
        state = JobState.BLOCKED.value
    after = None if since is None else time.time() - since
    with c.client() as client:
        jobs, total = client.list_jobs(state, limit, offset, queue=queue, since=after, sort=sort)
    show = render.blocked if blocked else render.jobs
    emit(jobs, as_json, lambda js: show(js, total, table_width(wide)))


@cli.command()
@click.argument("job_id")
@wide_option
@json_option
@pass_ctx
def show(c: Context, job_id: str, wide: bool, as_json: bool) -> None:
    """One job with its attempts history."""
    with c.client() as client:
        emit(client.get_job(job_id), as_json, lambda j: render.job_detail(j, table_width(wide)))


def _job_ids_argument(f: F) -> F:
    return click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")(f)


@cli.command()
@_job_ids_argument
@json_option
@pass_ctx
def cancel(c: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel jobs that have not started (pending, waiting, failed and waiting for a retry).

    They end `cancelled`; all the jobs named are cancelled, or none is. A running job is
    stopped with `queuectl kill`.
    """
    with c.client() as client:
        jobs = client.cancel(*job_ids)
    emit(jobs, as_json, lambda js: "\n".join(f"cancelled job {j['id']}" for j in js))


@cli.command()
@_job_ids_argument
@click.option(
    "--signal",
    "signal_name",
    default="TERM",
    show_default=True,
    help="the signal sent to the job's process group first (SIGKILL follows after the "
    "daemon's kill_grace)",
)
@click.option(
    "--retry",
    is_flag=True,
    help="count the killed attempt as a failure, so the job follows its retry policy "
    "(default: the job ends cancelled)",
)
@json_option
@pass_ctx
def kill(
    c: Context, job_ids: tuple[str, ...], signal_name: str, retry: bool, as_json: bool
) -> None:
    """Stop running jobs: SIGTERM (or --signal) to the whole process group, then SIGKILL.

    The attempt is recorded as `killed` and the job ends `cancelled`. Use `queuectl wait`
    to wait for the job to end.
    """
    with c.client() as client:
        ids = client.kill(*job_ids, signal=signal_name, retry=retry)
    emit(
        {"killing": ids, "signal": signal_name},
        as_json,
        lambda r: "\n".join(
            f"sent SIG{signal_name.upper().removeprefix('SIG')} to job {i}" for i in r["killing"]
        ),
    )


@cli.command()
@_job_ids_argument
@json_option
@pass_ctx
def retry(c: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Run finished jobs (completed, dead, cancelled) again, keeping their history."""
    with c.client() as client:
        jobs = client.retry(*job_ids)
    emit(jobs, as_json, lambda js: "\n".join(f"job {j['id']} is pending again" for j in js))


# -- retention ---------------------------------------------------------------------


@cli.command()
@click.option(
    "--state",
    type=click.Choice(list(PURGEABLE_STATES)),
    required=True,
    help="which finished jobs",
)
@click.option(
    "--older-than",
    type=Duration(MAX_PURGE_AGE_S),
    required=True,
    help="unchanged for at least this long: 30m, 12h, 7d",
)
@click.option("--queue", "-q", "queue", help="only jobs of this queue")
@click.option("--dry-run", is_flag=True, help="only say what would be removed")
@json_option
@pass_ctx
def purge(
    c: Context, state: str, older_than: float, queue: str | None, dry_run: bool, as_json: bool
) -> None:
    """Remove finished jobs and their log files, a few hundred a transaction.

    \b
      queuectl purge --state completed --older-than 7d
      queuectl purge --state dead --older-than 30d --queue mail --dry-run

    A job that an unfinished job waits on (--after) is kept until that one is final.
    The daemon does the same by itself as the configuration's [retention] says.
    """
    with c.client() as client:
        done = client.purge(state, older_than, queue=queue, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    emit(
        done,
        as_json,
        lambda d: (
            f"{verb} {d['jobs']} {state} job{'' if d['jobs'] == 1 else 's'} "
            f"and {render.size(d['bytes_freed'])} of log files"
        ),
    )


@cli.command()
@json_option
@pass_ctx
def vacuum(c: Context, as_json: bool) -> None:
    """Compact the queue database after a large purge (the daemon waits meanwhile).

    A database created by this version gives freed pages back as it purges; an older
    one is converted to do so by its first vacuum.
    """
    with c.client() as client:
        done = client.vacuum()
    emit(
        done,
        as_json,
        lambda d: (
            f"queue database: {render.size(d['bytes_before'])} -> "
            f"{render.size(d['bytes_after'])} ({d['seconds']:.1f}s)"
        ),
    )


# -- schedules -----------------------------------------------------------------------


@cli.group()
def schedule() -> None:
    """Recurring jobs: a cron expression enqueues one job per tick, exactly once."""


@schedule.command("add")
@click.argument("name")
@click.option(
    "--cron",
    required=True,
    help="five fields (minute hour day month weekday), or six with seconds last",
)
@click.option("--tz", default="UTC", show_default=True, help="time zone of the cron fields")
@click.option(
    "--overlap",
    type=click.Choice([o.value for o in Overlap]),
    default=Overlap.SKIP.value,
    show_default=True,
    help="while the previous run is not final: skip the tick, queue a run after it, or "
    "replace it (cancel or kill it)",
)
@click.option(
    "--catch-up",
    type=click.Choice([k.value for k in CatchUp]),
    default=CatchUp.LATEST.value,
    show_default=True,
    help="ticks missed while the daemon was down: one run for all (latest), one each "
    f"(all, at most {MAX_CATCHUP_RUNS}), or none",
)
@click.option("--replace", is_flag=True, help="change the schedule of this name")
@job_options
@json_option
@click.argument("command", nargs=-1, required=True)
@pass_ctx
def schedule_add(
    c: Context,
    /,
    name: str,
    cron: str,
    tz: str,
    overlap: str,
    catch_up: str,
    replace: bool,
    as_json: bool,
    command: tuple[str, ...],
    **options: Any,
) -> None:
    """Enqueue COMMAND at every tick of a cron expression.

    \b
      queuectl schedule add backup --cron '0 3 * * *' --tz Europe/Berlin -- ./backup.sh
      queuectl schedule add poll --cron '*/5 * * * *' --queue net --timeout 60 -- ./poll
      queuectl schedule add tick --cron '* * * * * */10' -- date   # every 10 seconds

    Each tick's job is named NAME.YYYYMMDDTHHMMSS (the tick in UTC).
    """
    cwd = job_cwd(options.pop("cwd"))
    spec = {**job_spec(command, options), "cwd": cwd}
    with c.client() as client:
        view = client.schedule_add(
            name, cron, spec, tz=tz, overlap=overlap, catch_up=catch_up, replace=replace
        )
    emit(view, as_json, render.schedule_detail)


@schedule.command("list")
@wide_option
@json_option
@pass_ctx
def schedule_list(c: Context, wide: bool, as_json: bool) -> None:
    """Every schedule: next and last tick, the last job and its state."""
    with c.client() as client:
        views = client.schedules()
    emit(views, as_json, lambda vs: render.schedules(vs, table_width(wide)))


@schedule.command("show")
@click.argument("name")
@json_option
@pass_ctx
def schedule_show(c: Context, name: str, as_json: bool) -> None:
    """One schedule with its job and policies."""
    with c.client() as client:
        emit(client.schedule(name), as_json, render.schedule_detail)


@schedule.command("pause")
@click.argument("name")
@pass_ctx
def schedule_pause(c: Context, name: str) -> None:
    """Make no more jobs until `resume` (the jobs made stay)."""
    with c.client() as client:
        client.pause_schedule(name)
    click.echo(f"schedule {name} paused")


@schedule.command("resume")
@click.argument("name")
@pass_ctx
def schedule_resume(c: Context, name: str) -> None:
    """Go on from the next tick (ticks of the pause are not caught up)."""
    with c.client() as client:
        view = client.resume_schedule(name)
    click.echo(f"schedule {name} resumed; next tick {render.when_zoned(view['next_at'])}")


@schedule.command("remove")
@click.argument("name")
@pass_ctx
def schedule_remove(c: Context, name: str) -> None:
    """Remove a schedule; the jobs it made stay."""
    with c.client() as client:
        client.remove_schedule(name)
    click.echo(f"schedule {name} removed")


@schedule.command("run")
@click.argument("name")
@json_option
@pass_ctx
def schedule_run(c: Context, name: str, as_json: bool) -> None:
    """Enqueue the schedule's job once, now (its ticks and overlap policy are untouched)."""
    with c.client() as client:
        job = client.run_schedule(name)
    emit(job, as_json, render.enqueued)


# -- cluster ---------------------------------------------------------------------


@cli.command("nodes")
@json_option
@pass_ctx
def nodes(c: Context, as_json: bool) -> None:
    """Every queuectld sharing this store: host, state, slots, running jobs.

    Several daemons share one PostgreSQL store (docs/postgres.md); a daemon is `gone`
    once its heartbeat is older than node_timeout (its jobs go back to the queue),
    `stopped` after a clean stop. The daemon that answered is marked with `*`.
    """
    with c.client() as client:
        emit(client.nodes(), as_json, render.nodes)


# -- named queues ----------------------------------------------------------------


@cli.group()
def queue() -> None:
    """Named queues: their jobs, limits and pauses."""


@queue.command("list")
@json_option
@pass_ctx
def queue_list(c: Context, as_json: bool) -> None:
    """Every queue: pending, waiting, running and dead jobs, limits, paused or not."""
    with c.client() as client:
        emit(client.queues(), as_json, render.queues)


@queue.command("set")
@click.argument("name")
@click.option(
    "--concurrency",
    type=Int(0, MAX_WORKERS * 1000),
    help="at most this many of its jobs run at once (0: no limit)",
)
@click.option(
    "--rate",
    help="at most this many of its jobs start per second, minute or hour: 10/s, 30/m, "
    "100/h ('none': no limit)",
)
@json_option
@pass_ctx
def queue_set(
    c: Context, name: str, concurrency: int | None, rate: str | None, as_json: bool
) -> None:
    """Set a queue's limits; they persist and apply at once."""
    if concurrency is None and rate is None:
        raise click.UsageError("give --concurrency, --rate or both")
    if rate is not None and rate.strip().lower() in ("none", "off", "0", ""):
        rate = ""
    with c.client() as client:
        view = client.set_queue(name, concurrency=concurrency, rate=rate)
    emit(view, as_json, lambda q: render.queues([q]))


@queue.command("pause")
@click.argument("name")
@json_option
@pass_ctx
def queue_pause(c: Context, name: str, as_json: bool) -> None:
    """Start nothing more from the queue; its running jobs finish, other queues go on."""
    with c.client() as client:
        view = client.pause_queue(name)
    emit(view, as_json, lambda q: f"queue {q['name']} paused")


@queue.command("resume")
@click.argument("name")
@json_option
@pass_ctx
def queue_resume(c: Context, name: str, as_json: bool) -> None:
    """Start the queue's jobs again."""
    with c.client() as client:
        view = client.resume_queue(name)
    emit(view, as_json, lambda q: f"queue {q['name']} resumed")


@cli.group()
def dlq() -> None:
    """The dead-letter queue: jobs that used up their retries."""


@dlq.command("list")
@click.option("--limit", type=Int(1, MAX_LIST_LIMIT), default=100, show_default=True)
@wide_option
@json_option
@pass_ctx
def dlq_list(c: Context, limit: int, wide: bool, as_json: bool) -> None:
    """List dead jobs."""
    with c.client() as client:
        jobs, total = client.list_jobs(JobState.DEAD.value, limit)
    emit(jobs, as_json, lambda js: render.jobs(js, total, table_width(wide)))


@dlq.command("retry")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--all", "every", is_flag=True, help="retry every job in the DLQ")
@json_option
@pass_ctx
def dlq_retry(c: Context, job_ids: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Move dead jobs back to pending with their attempts reset."""
    if every == bool(job_ids):
        raise click.UsageError("give one or more job ids, or --all")
    retried: list[Any] = []
    failed = 0
    with c.client() as client:
        ids = list(job_ids)
        if every:
            dead, _ = client.list_jobs(JobState.DEAD.value, MAX_LIST_LIMIT)
            ids = [j["id"] for j in dead]
        for job_id in ids:
            try:
                retried.append(client.dlq_retry(job_id))
            except QueuectlError as exc:
                if len(ids) == 1:
                    raise
                click.echo(f"queuectl: {exc.message}", err=True)
                failed += 1
    if as_json:
        click.echo(render.to_json(retried[0] if len(job_ids) == 1 else retried))
    elif every and not ids:
        click.echo("the DLQ is empty")
    else:
        for job in retried:
            click.echo(f"job {job['id']} moved from the DLQ to pending")
    if failed:
        sys.exit(EXIT_REFUSED)


@cli.command()
@click.argument("job_id")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="print the output as the job writes it, until the job has ended",
)
@json_option
@pass_ctx
def logs(c: Context, job_id: str, follow: bool, as_json: bool) -> None:
    """Print a job's output log: every finished attempt's command, times, exit code, output.

    Each attempt keeps at most log_max_bytes (queuectld.toml; 1 MiB by default) of
    its stdout and of its stderr: the first half and the last half, with a marker of
    what was cut between them.

    With -f, print the running attempt's output as it is written (its stdout on
    stdout, its stderr on stderr), then that of each retry, and end when the job is
    completed, dead or cancelled; a job not started yet is waited for. A job already finished,
    or one that printed nothing, shows its log as without -f.
    """
    out = sys.stdout.buffer
    if follow and as_json:
        raise click.UsageError("give --follow or --json, not both")
    with c.client() as client:
        if follow:
            for stream, data in client.follow_logs(job_id):
                sink = sys.stderr.buffer if stream == "stderr" else out
                sink.write(data)
                sink.flush()
            return
        if as_json:
            data = b"".join(client.logs(job_id))
            click.echo(render.to_json({"id": job_id, "log": data}))
            return
        wrote = False
        for chunk in client.logs(job_id):
            out.write(chunk)
            wrote = True
        out.flush()
        if not wrote:
            state = client.get_job(job_id)["state"]
            click.echo(f"queuectl: job {job_id} is {state}; no attempt has finished yet", err=True)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@click.option(
    "--timeout",
    type=Duration(MAX_TIMEOUT_S * 52),
    help="give up after this long: 30, 30s, 5m, 2h (exit status 124)",
)
@json_option
@pass_ctx
def wait(c: Context, job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Wait until every job is completed, dead or cancelled; the exit status says how.

    \b
    Exit status:
      0    every job completed
      N    the first job (in the order given) that did not complete failed with
           exit code N on its last attempt
      3    that job is dead without an exit code (timed out, killed by a signal,
           interrupted, or could not start)
      4    that job was cancelled
      124  --timeout passed before every job was final
      1    a job id is unknown, or the daemon could not be reached
    """
    with c.client() as client:
        view = client.wait(job_ids, timeout)
    emit(view, as_json, render.waited)
    sys.exit(wait_status(view))


def wait_status(view: WaitView) -> int:
    """The exit status of ``queuectl wait`` (see its help)."""
    if view["timed_out"]:
        return EXIT_WAIT_TIMEOUT
    for job in view["jobs"]:
        if job["state"] == JobState.COMPLETED:
            continue
        if job["state"] == JobState.CANCELLED:
            return EXIT_WAIT_CANCELLED
        code = job["last_exit_code"]
        return code if code else EXIT_WAIT_DEAD
    return EXIT_OK


@cli.command()
@json_option
@pass_ctx
def metrics(c: Context, as_json: bool) -> None:
    """Counters for monitoring: jobs, attempts, run times, workers."""
    with c.client() as client:
        emit(client.metrics(), as_json, _render_metrics)


def _render_metrics(m: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [(f"jobs_{k}", v) for k, v in m["jobs"].items()]
    rows.append(("jobs_total", m["jobs_total"]))
    rows += [(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in m["attempts"].items()]
    w = m["workers"]
    rows += [("workers_running", w["running"]), ("workers_desired", w["desired"])]
    rows += [("workers_busy", w["busy"]), ("uptime_seconds", f"{m['uptime_seconds']:.0f}")]
    return render.table(("metric", "value"), rows)


# -- configuration -----------------------------------------------------------------


@cli.group()
def config() -> None:
    """Queue settings, kept in the queue database; changes apply at once."""


config.help = (
    (config.help or "")
    + "\n\n\b\nSettings (default):\n"
    + "\n".join(
        f"  {key:<18} {help_} ({default})" for key, (default, help_) in SETTINGS_HELP.items()
    )
)


@config.command("get")
@click.argument("key")
@json_option
@pass_ctx
def config_get(c: Context, key: str, as_json: bool) -> None:
    """Show one setting."""
    with c.client() as client:
        emit(client.config_get(key), as_json, lambda s: f"{s['key']} = {s['value']}")


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@pass_ctx
def config_set(c: Context, key: str, value: str) -> None:
    """Change a setting; it applies at once and is kept across restarts."""
    # ignore_unknown_options: `-1` is a value to check (and refuse), not an option.
    with c.client() as client:
        s = client.config_set(key, value)
    click.echo(f"{s['key']} = {s['value']}")


@config.command("list")
@wide_option
@json_option
@pass_ctx
def config_list(c: Context, wide: bool, as_json: bool) -> None:
    """Show every setting with its default."""
    with c.client() as client:
        settings = client.config_list()
    emit(
        settings,
        as_json,
        lambda ss: render.table(
            ("key", "value", "default", "meaning"),
            [(s["key"], s["value"], s["default"], s["help"]) for s in ss],
            width=table_width(wide),
            elastic=(3,),
        ),
    )


@cli.command("http")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="address to serve on [default: 127.0.0.1:8080, or listen in the config file]; "
    "any address but loopback needs a token",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="gateway settings (TOML: listen, token_file, max_body_bytes, allowed_origins)",
)
@pass_ctx
def http_cmd(c: Context, listen: str | None, config_file: str | None) -> None:
    """Serve the REST API, Prometheus metrics and the dashboard (the `http` extra).

    The token comes from QUEUECTL_HTTP_TOKEN, QUEUECTL_HTTP_TOKEN_FILE or the config
    file, never from the command line. See docs/http.md.
    """
    try:
        from queuectl.http import serve, settings
    except ImportError as exc:
        raise click.UsageError(
            f"the HTTP gateway needs the http extra ({exc.name} is missing): "
            "pip install 'queuectl[http]'"
        ) from None
    try:
        conf = settings.load(listen, config_file, c.socket)
    except settings.SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    serve.run(conf, autostart=c.autostart)


@cli.command()
@pass_ctx
def shutdown(c: Context) -> None:
    """Ask the daemon to drain (running jobs finish) and exit; never starts one."""
    try:
        with c.client(autostart=False) as client:
            client.shutdown()
    except NoDaemon:
        click.echo("queuectld is not running")
        return
    except ShuttingDown as exc:  # already draining: what was asked is under way
        click.echo(exc.message)
        return
    click.echo("queuectld is shutting down")


def main() -> None:
    """Console entry point: run the CLI and map errors to exit statuses."""
    try:
        cli.main(standalone_mode=False, prog_name="queuectl")
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QueuectlError as exc:
        click.echo(f"queuectl: {exc.message}", err=True)
        sys.exit(EXIT_REFUSED)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
