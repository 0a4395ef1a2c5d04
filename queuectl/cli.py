"""``queuectl``: parse -> one Client call -> render. Exit statuses live in :func:`main`.

0 success; 1 the daemon refused the request (not found, duplicate id, invalid job)
or could not be reached; 2 misuse (bad flags, invalid JSON); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from queuectl import render
from queuectl.client import Client
from queuectl.errors import QueuectlError
from queuectl.protocol import MAX_BATCH_JOBS, JobState

F = TypeVar("F", bound=Callable[..., Any])

STATES = [s.value for s in JobState]
MAX_OFFSET = 2**62  # what the daemon accepts (msgpack carries at most 64 bits)


class Context:
    """Options shared by every command."""

    def __init__(self, socket: str | None, autostart: bool | None) -> None:
        self.socket = socket
        self.autostart = autostart

    @contextmanager
    def client(self) -> Iterator[Client]:
        with Client.connect(self.socket, autostart=self.autostart) as client:
            yield client


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


@cli.command(cls=_EnqueueCommand, context_settings={"ignore_unknown_options": False})
@click.option("--id", "job_id", help="job id (default: a generated number)")
@click.option("--max-retries", type=click.IntRange(0, 1000), help="retries before the DLQ")
@click.option("--timeout", type=click.FloatRange(0.001), help="seconds before the job is stopped")
@click.option("--delay", type=click.FloatRange(0), help="seconds to wait before the first run")
@click.option(
    "--not-idempotent",
    is_flag=True,
    help="if a run is cut short (crash, drain), mark the job dead instead of running it again",
)
@click.option(
    "--file",
    "from_file",
    type=click.File("r"),
    help="enqueue every job of a JSON-lines file ('-' for stdin); up to "
    f"{MAX_BATCH_JOBS} jobs go in one transaction (all stored or none)",
)
@json_option
@click.argument("command", nargs=-1, required=False)
@pass_ctx
def enqueue(
    c: Context,
    job_id: str | None,
    max_retries: int | None,
    timeout: float | None,
    delay: float | None,
    not_idempotent: bool,
    from_file: Any,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Add a job: a JSON object, or flags and a command after `--`.

    \b
      queuectl enqueue '{"id":"job1","command":"echo Hello"}'
      queuectl enqueue --id job2 --timeout 30 -- sleep 2
    """
    cwd = os.getcwd()
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
    after_dashes = click.get_current_context().meta.get("queuectl.after_dashes", False)
    if len(command) == 1 and not after_dashes and command[0].lstrip().startswith("{"):
        flags = (job_id, max_retries, timeout, delay)
        if any(v is not None for v in flags) or not_idempotent:
            raise click.UsageError(
                "put id, max_retries, timeout, delay and idempotent inside the JSON job"
            )
        spec = _parse_json_job(command[0], "the job")
    else:
        spec = {"command": command[0] if len(command) == 1 else shlex.join(command)}
        for key, value in (
            ("id", job_id),
            ("max_retries", max_retries),
            ("timeout", timeout),
            ("delay", delay),
        ):
            if value is not None:
                spec[key] = value
        if not_idempotent:
            spec["idempotent"] = False
    spec.setdefault("cwd", cwd)
    with c.client() as client:
        job = client.enqueue_spec(spec)
    emit(job, as_json, lambda j: f"enqueued job {j['id']}: {j['command']}")


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
@click.option("--count", type=int, default=1, show_default=True, help="number of workers")
@click.option("--follow", is_flag=True, help="print job events until the queue is drained")
@pass_ctx
def worker_start(c: Context, count: int, follow: bool) -> None:
    """Run COUNT workers (kept across daemon restarts)."""
    if count < 0:
        raise click.UsageError(f"--count must not be negative, not {count}")
    with c.client() as client:
        view = client.set_workers(count)
        click.echo(f"workers: {view['desired']} desired")
        if follow:
            _follow(client, until_idle=True)


@worker.command("stop")
@pass_ctx
def worker_stop(c: Context) -> None:
    """Stop the workers gracefully: no new jobs; running jobs finish."""
    with c.client() as client:
        view = client.stop_workers()
    click.echo(f"workers stopping: {view['busy']} finishing their current job")


@cli.command()
@click.option("--until-idle", is_flag=True, help="stop once nothing is left to run")
@pass_ctx
def watch(c: Context, until_idle: bool) -> None:
    """Print job events as they happen."""
    with c.client() as client:
        _follow(client, until_idle)


def _follow(client: Client, until_idle: bool) -> None:
    for event in client.watch(until_idle=until_idle):
        line = render.event_line(event)
        if line:
            click.echo(line)


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
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0, MAX_OFFSET), default=0)
@json_option
@pass_ctx
def list_cmd(c: Context, state: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List jobs, oldest first."""
    with c.client() as client:
        jobs, total = client.list_jobs(state, limit, offset)
    emit(jobs, as_json, lambda js: render.jobs(js, total))


@cli.command()
@click.argument("job_id")
@json_option
@pass_ctx
def show(c: Context, job_id: str, as_json: bool) -> None:
    """One job with its attempts history."""
    with c.client() as client:
        emit(client.get_job(job_id), as_json, render.job_detail)


@cli.group()
def dlq() -> None:
    """The dead-letter queue: jobs that used up their retries."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@pass_ctx
def dlq_list(c: Context, limit: int, as_json: bool) -> None:
    """List dead jobs."""
    with c.client() as client:
        jobs, total = client.list_jobs(JobState.DEAD.value, limit)
    emit(jobs, as_json, lambda js: render.jobs(js, total))


@dlq.command("retry")
@click.argument("job_id")
@json_option
@pass_ctx
def dlq_retry(c: Context, job_id: str, as_json: bool) -> None:
    """Move a dead job back to pending with its attempts reset."""
    with c.client() as client:
        job = client.dlq_retry(job_id)
    emit(job, as_json, lambda j: f"job {j['id']} moved from the DLQ to pending")


@cli.command()
@click.argument("job_id")
@pass_ctx
def logs(c: Context, job_id: str) -> None:
    """Print a job's output log (every attempt)."""
    out = sys.stdout.buffer
    with c.client() as client:
        for chunk in client.logs(job_id):
            out.write(chunk)
    out.flush()


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
    """Queue settings: max-retries, backoff-base, default-timeout, ..."""


@config.command("get")
@click.argument("key")
@json_option
@pass_ctx
def config_get(c: Context, key: str, as_json: bool) -> None:
    """Show one setting."""
    with c.client() as client:
        emit(client.config_get(key), as_json, lambda s: f"{s['key']} = {s['value']}")


@config.command("set")
@click.argument("key")
@click.argument("value")
@pass_ctx
def config_set(c: Context, key: str, value: str) -> None:
    """Change a setting; it applies at once and is kept across restarts."""
    with c.client() as client:
        s = client.config_set(key, value)
    click.echo(f"{s['key']} = {s['value']}")


@config.command("list")
@json_option
@pass_ctx
def config_list(c: Context, as_json: bool) -> None:
    """Show every setting with its default."""
    with c.client() as client:
        settings = client.config_list()
    emit(
        settings,
        as_json,
        lambda ss: render.table(
            ("key", "value", "default", "meaning"),
            [(s["key"], s["value"], s["default"], s["help"]) for s in ss],
        ),
    )


@cli.command()
@pass_ctx
def shutdown(c: Context) -> None:
    """Ask the daemon to drain (running jobs finish) and exit."""
    with c.client() as client:
        client.shutdown()
    click.echo("queuectld is shutting down")


def main() -> None:
    """Console entry point: run the CLI and map errors to exit statuses."""
    try:
        cli.main(standalone_mode=False, prog_name="queuectl")
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QueuectlError as exc:
        click.echo(f"queuectl: {exc.message}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
