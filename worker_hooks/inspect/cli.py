"""``stager logs TASK`` (how each attempt of a task ended, its command's logs from S3) and
``stager report WORKFLOW`` (an HTML page on how the workflow ran)."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from stager.atomic import atomic_file
from stager.cli.context import CliState
from stager.errors import NotFoundError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from worker_hooks.dispatch.cli import with_client
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.inspect.report import render_report
from worker_hooks.task.protocol import AttemptInfo, TaskInfo


def chosen_attempt(info: TaskInfo, attempt: int | None) -> AttemptInfo:
    """The attempt asked for; by default the last one whose command left logs (else the last)."""
    if not info.attempts:
        raise NotFoundError(
            f"task {info.id} has not been leased yet ({info.state.value})",
            hint=f"`stager status {info.workflow}` shows what it waits for",
        )
    if attempt is None:
        with_logs = [a for a in info.attempts if a.logs]
        return (with_logs or list(info.attempts))[-1]
    for item in info.attempts:
        if item.attempt == attempt:
            return item
    numbers = ", ".join(str(a.attempt) for a in info.attempts)
    raise NotFoundError(f"task {info.id} has no attempt {attempt}", hint=f"it has: {numbers}")


def last_lines(data: bytes, count: int | None) -> bytes:
    """The last ``count`` lines of ``data`` (all of it for None); a last line without its
    newline counts as a line."""
    if count is None:
        return data
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:]) if count > 0 else b""


def _read_log(store: ObjectStore, url: S3Url) -> bytes:
    """A log's bytes; one line saying so if it is gone (a lifecycle rule, a cleanup)."""
    try:
        return store.get_bytes(url)
    except NotFoundError:
        return f"(no longer in S3: {url})\n".encode()


def _when(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


@click.command(
    "logs",
    epilog="""\b
Examples:
  stager logs map-0007                # the last attempt that ran: how it ended, stdout, stderr
  stager logs map-0007 --attempt 1
  stager logs map-0007 --json
  stager logs map-0007 --tail 20          # the last 20 lines of each log
  stager logs align/map-0007          # WORKFLOW/TASK, when two workflows have a map-0007
""",
)
@click.argument("task_id")
@click.option("--attempt", type=int, help="This attempt [the last one whose command ran].")
@click.option("--json", "as_json", is_flag=True, help="Attempts and log texts as JSON.")
@click.option(
    "--tail", type=click.IntRange(min=0), help="Only the last N lines of each log [all of it]."
)
@with_client
@click.pass_obj
def logs_command(
    core: CliState,
    task_id: str,
    attempt: int | None,
    as_json: bool,
    tail: int | None,
    client: DispatcherClient,
) -> None:
    """How a task's attempts ended (node, outcome, the one-line reason) and the stdout and
    stderr its command left in S3. TASK is an id, or WORKFLOW/ID where two workflows
    have that id."""
    info = client.task(task_id)
    shown = chosen_attempt(info, attempt)
    store = core.object_store()
    texts = {
        url.key.rsplit("/", 1)[-1]: last_lines(_read_log(store, url), tail) for url in shown.logs
    }
    if as_json:
        body = {
            "task": info.id,
            "state": info.state.value,
            "attempts": [
                {
                    "attempt": a.attempt,
                    "worker": a.worker,
                    "started_at": a.started_at,
                    "ended_at": a.ended_at,
                    "outcome": a.outcome,
                    "error": a.error,
                    "logs": [str(url) for url in a.logs],
                }
                for a in info.attempts
            ],
            "shown": shown.attempt,
            "logs": {name: data.decode(errors="replace") for name, data in texts.items()},
        }
        click.echo(json.dumps(body, indent=1))
        return
    click.echo(f"task {info.id} ({info.workflow}): {info.state.value}")
    for a in info.attempts:
        mark = "*" if a is shown else " "
        click.echo(
            f"{mark} attempt {a.attempt} on {a.worker}, {_when(a.started_at)} to "
            f"{_when(a.ended_at)}: {a.outcome or 'running'}" + (f": {a.error}" if a.error else "")
        )
    if not texts:
        click.echo("no logs: the command wrote nothing, or did not run")
    for name, data in texts.items():
        part = f"last {tail} lines of " if tail is not None else ""
        click.echo(f"--- {part}{name} of attempt {shown.attempt} ---")
        sys.stdout.flush()
        sys.stdout.buffer.write(data if data.endswith(b"\n") or not data else data + b"\n")
        sys.stdout.buffer.flush()


def write_report(client: DispatcherClient, workflow: str, path: Path) -> Path:
    """Write the run report of ``workflow`` to ``path`` (whole, or not at all)."""
    page = render_report(client.report(workflow), time.time())
    with atomic_file(path, durable=False) as handle:
        handle.write(page.encode())
    return path


@click.command(
    "report",
    epilog="""\b
Examples:
  stager report run1                     # writes run1-report.html here
  stager report run1 -o /tmp/run1.html
""",
)
@click.argument("workflow")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="[WORKFLOW-report.html]"
)
@with_client
def report_command(workflow: str, output: Path | None, client: DispatcherClient) -> None:
    """Write an HTML page on how WORKFLOW ran: a timeline of attempts per node, where
    each node's input bytes came from, the counts and the failed tasks' reasons."""
    written = write_report(client, workflow, output or Path(f"{workflow}-report.html"))
    click.echo(f"wrote {written}", err=True)
