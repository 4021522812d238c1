"""``stager worker``: the node agent's command."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fsd.peerclient import PeerClient
from fsd.service import NodeService
from stager.cli.context import CliState
from stager.settings import load_component
from stager.tokens import load_token
from worker_hooks.dispatch.cli import (
    ca_file_option,
    client_from_flags,
    dispatcher_url_option,
    token_file_option,
)
from worker_hooks.task.protocol import Written
from worker_hooks.worker.agent import ServiceLink, Worker
from worker_hooks.worker.settings import WorkerSettings
from worker_hooks.worker.spot import SpotWatcher
from worker_hooks.wrap.cli import node_options, pass_env_option, take_node_flags
from worker_hooks.wrap.node import Node, open_node


def start_service(
    node: Node, listen: str, token_file: Path | None, log: Callable[[str], None]
) -> tuple[NodeService, ServiceLink]:
    """Start the node file service beside a worker; the worker's link to it."""
    token = load_token(token_file)
    written: queue.SimpleQueue[Written] = queue.SimpleQueue()
    service = NodeService(
        node.cache,
        node.store,
        token,
        listen,
        on_written=lambda item: written.put(Written(item.digest, item.url)),
        log=log,
        write_at_once=False,  # the first heartbeat says whether the outbox still stands
    )
    address = service.start()
    log(f"node file service on {address}")
    link = ServiceLink(
        address,
        PeerClient(token),
        service.outbox,
        written,
        wake_writer=service.writer.wake,
        start_writing=service.start_writing,
    )
    return service, link


@click.command(
    "worker",
    epilog="""\b
Examples:
  stager worker --dispatcher http://frontend:8765 --token-file ~/.stager-token \\
      --cache-dir /scratch/stager/cache --sandbox-dir /scratch/stager/sandboxes --slots 2
  STAGER_DISPATCHER_URL=https://frontend:8765 stager worker --ca-file frontend-ca.pem
""",
)
@dispatcher_url_option
@token_file_option
@ca_file_option
@click.option("--slots", type=int, help="Tasks run at once [1].")
@click.option("--prefetch", type=int, help="Tasks leased ahead, inputs staged early [1].")
@click.option("--drain-s", type=float, help="On SIGTERM, let running tasks finish this long [60].")
@click.option("--heartbeat-s", type=float, help="Seconds between heartbeats [5].")
@click.option("--worker-id", help="Name shown in `stager status` [host-pid].")
@click.option(
    "--serve",
    metavar="HOST:PORT",
    help="Run the node file service here (peer fetch, mirror, local outputs); "
    "peers must reach this address.",
)
@pass_env_option("Give every task this variable of the worker's (repeatable).")
@node_options
@click.pass_obj
def worker_command(
    core: CliState,
    /,
    dispatcher_url: str,
    token_file: Path | None,
    ca_file: str | None,
    worker_id: str | None,
    pass_env: tuple[str, ...],
    serve: str | None,
    **flags: Any,
) -> None:
    """Pull tasks from the dispatcher and run them (outbound connections only).

    SIGTERM drains: no new leases, unstarted tasks are handed back, running
    ones get --drain-s to finish. So does a spot interruption notice (EC2
    instance metadata, watched unless spot_metadata_url is 'off'), which also
    sends the node's `local` outputs and write-behind outbox to S3 before the
    instance goes.
    """
    node_flags = take_node_flags(flags)
    settings = load_component(WorkerSettings, flags, config_path=core.config_path, section="worker")
    node = open_node(core, node_flags)
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    service, link = (None, None) if serve is None else start_service(node, serve, token_file, log)
    worker = Worker(
        client_from_flags(dispatcher_url, token_file, ca_file),
        node,
        settings,
        worker_id=worker_id,
        pass_env=pass_env,
        service=link,
        spot=None
        if settings.spot_metadata_url == "off"
        else SpotWatcher(settings.spot_metadata_url, log=log),
        log=log,
    )
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: signals.append(number))  # no locks in a handler
    click.echo(f"worker {worker.worker_id}: pulling from {dispatcher_url}", err=True)
    try:
        report = worker.run(threading.Event(), signalled=lambda: bool(signals))
    finally:
        if service is not None:
            service.stop()
    click.echo(
        f"worker {worker.worker_id}: stopped; {report.done} done, {report.failed} failed, "
        f"{report.handed_back} handed back",
        err=True,
    )
