"""``stager dispatcher serve``, ``stager submit``, ``stager status``, ``stager cancel``."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from stager.cli.context import CliState
from stager.errors import ConfigError
from stager.settings import load_component
from stager.tokens import TOKEN_ENV, load_token, server_token
from stager.units import format_size
from worker_hooks.dispatch.checkpoint import Checkpointer
from worker_hooks.dispatch.client import SUBMIT_CHUNK_TASKS, DispatcherClient
from worker_hooks.dispatch.follow import wait_for_workflow
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.dispatch.settings import DispatcherSettings
from worker_hooks.dispatch.taskdb import Limits, TaskDB
from worker_hooks.task.protocol import RetryRequest, SubmitReply, TaskState, WorkflowReport
from worker_hooks.task.workflow import load_workflow
from worker_hooks.task.workflowfile import read_workflow_file, streamed

URL_ENV = "STAGER_DISPATCHER_URL"
TOKEN_FILE_ENV = "STAGER_DISPATCHER_TOKEN_FILE"
dispatcher_url_option = click.option(
    "--dispatcher",
    "dispatcher_url",
    envvar=URL_ENV,
    required=True,
    help="Dispatcher URL, e.g. https://frontend:8765 [$STAGER_DISPATCHER_URL].",
)
token_file_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=TOKEN_FILE_ENV,
    help=f"File holding the dispatcher's token [${TOKEN_ENV}].",
)
ca_file_option = click.option(
    "--ca-file", help="CA certificate to trust for an https dispatcher (self-signed)."
)


def client_from_flags(url: str, token_file: Path | None, ca_file: str | None) -> DispatcherClient:
    return DispatcherClient(url, load_token(token_file), ca_file=ca_file)


def with_client(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command --dispatcher, --token-file and --ca-file; it is called with the
    ``client`` they make instead."""

    @functools.wraps(command)
    def run(
        *args: Any, dispatcher_url: str, token_file: Path | None, ca_file: str | None, **kw: Any
    ) -> None:
        command(*args, client=client_from_flags(dispatcher_url, token_file, ca_file), **kw)

    return dispatcher_url_option(token_file_option(ca_file_option(run)))


@click.group("dispatcher")
def dispatcher_group() -> None:
    """The task dispatcher that workers pull from (runs on the frontend)."""


MEMO_READERS = "stager.memo_readers"
MEMO_CHUNK = 1000


def _import_memo(db: TaskDB, url: str, config_path: Path | None) -> None:
    """Fill an empty memo from the results recorded in S3, through the reader registered
    for ``s3`` (the dispatcher imports no S3 client)."""
    if db.has_results():
        click.echo("--memo-from skipped: the database records results already", err=True)
        return
    readers = entry_points(group=MEMO_READERS, name="s3")
    if not readers:
        raise ConfigError("--memo-from needs stager's S3 reader, which is not installed")
    (reader,) = readers
    results = reader.load()(url, config_path)
    count = 0
    while chunk := list(itertools.islice(results, MEMO_CHUNK)):
        db.remember(chunk)
        count += len(chunk)
    click.echo(f"memo: {count} results read from {url}", err=True)


@dispatcher_group.command(
    "serve",
    epilog="""\b
Examples:
  stager dispatcher serve                               # 127.0.0.1:8765, token file printed
  stager dispatcher serve --host 0.0.0.0 --tls-cert c.pem --tls-key k.pem
  stager dispatcher serve --policy max-cache-hit --lease-s 120
""",
)
@click.option("--host", help="Address to listen on [127.0.0.1].")
@click.option("--port", type=int, help="Port [8765]; 0 picks a free one.")
@click.option("--db", "dispatcher_db", type=click.Path(path_type=Path), help="Task database.")
@click.option(
    "--policy",
    type=click.Choice([p.value for p in Policy]),
    help="Scheduling [good-cache-compute].",
)
@click.option("--lease-s", type=float, help="Lease length between heartbeats, seconds [60].")
@click.option("--max-failures", type=int, help="Failed attempts before a task fails [3].")
@click.option("--starvation-s", type=float, help="Bound on how long a task is passed over [60].")
@click.option(
    "--memo-from",
    metavar="S3_PREFIX",
    help="On a database that records no result yet: first read the results recorded"
    " under this results prefix (manifests and segments), so tasks computed before are"
    " not run again.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM cert.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM key.")
@token_file_option
@click.option(
    "--url-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the URL here once listening (for scripts using --port 0).",
)
@click.pass_obj
def serve_command(
    core: CliState,
    /,
    token_file: Path | None,
    url_file: Path | None,
    memo_from: str | None,
    **flags: Any,
) -> None:
    """Serve the task queue over HTTP(S); state survives restarts (SQLite).

    Every request must carry the token (Authorization: Bearer). Without
    --token-file or $STAGER_DISPATCHER_TOKEN a new token is made and saved
    beside the database, readable by you only.
    """
    from worker_hooks.dispatch.server import Dispatcher, serve, tls_context  # aiohttp: only here

    settings = load_component(
        DispatcherSettings, flags, config_path=core.config_path, section="dispatcher"
    )
    token, saved = server_token(token_file, settings.dispatcher_db.with_name("dispatcher.token"))
    tls = tls_context(
        str(settings.tls_cert) if settings.tls_cert else None,
        str(settings.tls_key) if settings.tls_key else None,
    )
    limits = Limits(
        lease_s=settings.lease_s,
        max_failures=settings.max_failures,
        worker_timeout_s=settings.worker_timeout_s,
        starvation_s=settings.starvation_s,
        policy=settings.policy,
    )
    db = TaskDB(settings.dispatcher_db, limits)
    if memo_from is not None:
        _import_memo(db, memo_from, core.config_path)

    def ready(url: str) -> None:
        where = f"; token in {saved}" if saved else ""
        policy = settings.policy.value
        click.echo(f"dispatcher listening on {url} (policy {policy}){where}", err=True)
        if url_file is not None:
            url_file.write_text(url + "\n")

    async def main() -> None:
        await serve(
            Dispatcher(db, token), host=settings.host, port=settings.port, tls=tls, on_ready=ready
        )

    try:
        db.checkpoint_elsewhere()
        with Checkpointer(settings.dispatcher_db):
            asyncio.run(main())
    finally:
        db.close()


def per_task_figures(report: WorkflowReport) -> dict[str, Any]:
    """Each task's node, input bytes by source and phase seconds; each node's totals."""
    tasks = []
    nodes: dict[str, dict[str, float]] = {}
    for task in report.tasks:
        node = task.attempts[-1].worker if task.attempts else None
        figures = {
            "bytes_from_s3": task.bytes_from_s3,
            "bytes_from_cache": task.bytes_from_cache - task.bytes_from_peers,
            "bytes_from_peers": task.bytes_from_peers,
        }
        tasks.append(
            {
                "id": task.id,
                "state": task.state.value,
                "node": node,
                "attempts": len(task.attempts),
                "memoized": task.memoized,
                **figures,
                "seconds": task.seconds,
            }
        )
        if node is not None:
            totals = nodes.setdefault(node, {"tasks": 0, **dict.fromkeys(figures, 0)})
            totals["tasks"] += 1
            for key, value in figures.items():
                totals[key] += value
            for phase, seconds in task.seconds.items():
                totals[f"{phase}_s"] = round(totals.get(f"{phase}_s", 0.0) + seconds, 3)
    return {"tasks": tasks, "nodes": nodes}


@click.command(
    "submit",
    epilog="""\b
Examples:
  stager submit workflow.yaml --wait
  stager submit more-tasks.json --workflow align   # add tasks to workflow align
  stager submit tasks.json --dispatcher http://127.0.0.1:8765 --token-file tok
""",
)
@click.argument("workflow_file", type=click.Path(dir_okay=False, path_type=Path))
@with_client
@click.option("--wait", is_flag=True, help="Show progress until every task has ended.")
@click.option(
    "--workflow",
    "workflow_name",
    help="Submit under this workflow name (to add tasks to a workflow submitted before) "
    "instead of the file's name: or its name without extension.",
)
def submit_command(
    workflow_file: Path, wait: bool, workflow_name: str | None, client: DispatcherClient
) -> None:
    """Submit a workflow file (JSON or YAML; see docs/workflows.md).

    With --wait, exits 0 only if every task succeeded (10 otherwise).
    """
    send: Callable[..., SubmitReply]
    if streamed(workflow_file):  # large: read a task at a time, sent in parts as read
        big = read_workflow_file(workflow_file)
        named, count = big.name, len(big)
        send = functools.partial(client.submit_parts, big.parts(SUBMIT_CHUNK_TASKS))
    else:
        named, tasks = load_workflow(workflow_file)
        count = len(tasks)
        send = functools.partial(client.submit, tasks)
    name = workflow_name or named
    with tqdm(total=count, unit="task", desc=name, disable=None, leave=False) as bar:
        reply = send(workflow=name, sent=bar.update)
    click.echo(
        f"workflow {name}: {len(reply.submitted)} new tasks, {len(reply.again)} to run again, "
        f"{len(reply.kept)} kept from before",
        err=True,
    )
    if wait:
        wait_for_workflow(client, name)


@click.command(
    "cancel",
    epilog="""\b
Examples:
  stager cancel map-0007 map-0008
  stager cancel align/map-0007      # WORKFLOW/TASK, when two workflows have a map-0007
""",
)
@click.argument("task_ids", nargs=-1, required=True)
@with_client
def cancel_command(task_ids: tuple[str, ...], client: DispatcherClient) -> None:
    """Cancel tasks that have not finished (their dependants fail)."""
    for task_id in task_ids:
        click.echo(f"{task_id}: {client.cancel(task_id).value}")


@click.command(
    "status",
    epilog="""\b
Examples:
  stager status                 # every workflow, and the workers
  stager status run1            # run1's counts, its running tasks and why tasks failed
  stager status run1 --json
""",
)
@click.argument("workflow", required=False)
@with_client
@click.option("--workflow", "workflow_flag", help="The same as the WORKFLOW argument.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status_command(
    workflow: str | None, workflow_flag: str | None, as_json: bool, client: DispatcherClient
) -> None:
    """Queue counts, workers, throughput and cache hit rate; for a WORKFLOW also its
    running tasks (node, age) and its failed ones with their one-line reason."""
    workflow = workflow or workflow_flag
    status = client.status(workflow)
    if as_json:
        body = json.loads(status.to_json())
        if workflow:
            body |= per_task_figures(client.report(workflow))
        click.echo(json.dumps(body, indent=1))
        return
    counts = "  ".join(f"{state} {n}" for state, n in status.counts.items())
    click.echo(f"tasks      {counts}")
    click.echo(f"policy     {status.policy}")
    rate = status.tasks_per_s_overall
    click.echo(
        f"throughput {status.tasks_per_s_last_minute:.2f} tasks/s (last minute), {rate:.2f} overall"
        if rate
        else "throughput -"
    )
    hit = status.cache_hit_rate
    click.echo(
        f"inputs     {format_size(status.bytes_from_cache)} from node caches "
        f"({format_size(status.bytes_from_peers)} of it from peers), "
        f"{format_size(status.bytes_from_s3)} from S3"
        + (f" (hit rate {hit:.0%})" if hit is not None else "")
    )
    if status.bytes_written_behind:
        click.echo(f"outputs    {format_size(status.bytes_written_behind)} written behind to S3")
    for kept in status.node_only:
        click.echo(
            f"only on nodes  {kept.workflow}: {kept.outputs} outputs, "
            f"{format_size(kept.bytes)} (not in S3 yet)"
        )
    for w in status.workers:
        state = "lost" if w.lost else "alive" if w.alive else "silent"
        serves = f", serves {w.address}" if w.address else ""
        click.echo(
            f"worker     {w.id:<24} {state:<6} running {w.running:<3} "
            f"cache {format_size(w.cache_bytes)} ({w.cached_digests} entries), "
            f"seen {w.last_seen_s_ago} s ago{serves}"
        )
    if not status.workers:
        click.echo("workers    none has contacted this dispatcher yet")
    for brief in status.running:
        click.echo(
            f"running    {brief.id:<24} on {brief.worker}, attempt {brief.attempt}, "
            f"for {brief.age_s:g} s"
        )
    for brief in status.failed:
        click.echo(f"failed     {brief.id:<24} {brief.error}")
    if workflow and status.count(TaskState.FAILED) > len(status.failed):
        click.echo(f"failed     ... {status.count(TaskState.FAILED) - len(status.failed)} more")
    if workflow and status.failed:
        click.echo(f"           `stager logs TASK` shows a task's logs; `stager retry {workflow}`")


@click.command(
    "retry",
    epilog="""\b
Examples:
  stager retry run1                 # every failed or cancelled task of run1, and --wait
  stager retry run1 --failed map-0007 --wait
""",
)
@click.argument("workflow")
@click.argument("task_ids", nargs=-1)
@click.option("--failed", "only_failed", is_flag=True, help="Failed tasks only, not cancelled.")
@click.option("--wait", is_flag=True, help="Show progress until every task has ended.")
@with_client
def retry_command(
    workflow: str,
    task_ids: tuple[str, ...],
    only_failed: bool,
    wait: bool,
    client: DispatcherClient,
) -> None:
    """Run a workflow's failed (and cancelled) tasks again, or only TASK_IDS among them,
    with the dependants that failed with them. Submitting the fixed workflow file again
    does the same for tasks whose spec changed."""
    reply = client.retry(workflow, RetryRequest(only_failed, task_ids))
    click.echo(f"workflow {workflow}: {len(reply.again)} tasks to run again", err=True)
    if wait:
        wait_for_workflow(client, workflow)


@click.command(
    "recover",
    epilog="""\b
Examples:
  stager recover --node node-7 --dry-run     # what losing node-7 costs, changing nothing
  stager recover --node node-7               # it was terminated: recover now, not at lease expiry
""",
)
@click.option("--node", "worker", required=True, help="The worker id, as `stager status` shows.")
@click.option("--dry-run", is_flag=True, help="Report what would be done; change nothing.")
@with_client
def recover_command(worker: str, dry_run: bool, client: DispatcherClient) -> None:
    """Take a node as lost with its cache: re-queue its tasks, recompute the outputs only it
    held that are still needed (docs/failures.md). The dispatcher does this by itself for a
    node silent for longer than a lease."""
    report = client.recover(worker, dry_run=dry_run)
    would = "would be " if report.dry_run else ""
    click.echo(
        f"node {report.worker}: {'dry run, nothing changed' if dry_run else 'taken as lost'}"
    )
    click.echo(f"outputs safe on other nodes     {report.outputs_safe}")
    click.echo(f"outputs written from a mirror   {report.outputs_from_mirror}")
    click.echo(f"outputs lost, no longer needed  {report.outputs_dropped}")
    click.echo(f"tasks {would}recomputed: {', '.join(report.recomputed) or 'none'}")
    click.echo(f"tasks {would}sent back to wait: {', '.join(report.reset) or 'none'}")
    click.echo(f"tasks {would}re-queued from its leases: {', '.join(report.requeued) or 'none'}")
