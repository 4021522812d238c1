"""``stager worker``: the node agent's command."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from stager.cli.context import CliState
from stager.settings import load_component
from worker_hooks.dispatch.cli import (
    ca_file_option,
    client_from_flags,
    dispatcher_url_option,
    token_file_option,
)
from worker_hooks.worker.agent import Worker
from worker_hooks.worker.settings import WorkerSettings
from worker_hooks.wrap.cli import node_options, pass_env_option, take_node_flags
from worker_hooks.wrap.node import open_node


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
    **flags: Any,
) -> None:
    """Pull tasks from the dispatcher and run them (outbound connections only).

    SIGTERM (a spot interruption notice) drains: no new leases, unstarted
    tasks are handed back, running ones get --drain-s to finish.
    """
    node_flags = take_node_flags(flags)
    settings = load_component(WorkerSettings, flags, config_path=core.config_path, section="worker")
    node = open_node(core, node_flags)
    worker = Worker(
        client_from_flags(dispatcher_url, token_file, ca_file),
        node,
        settings,
        worker_id=worker_id,
        pass_env=pass_env,
        log=lambda line: click.echo(line, err=True),
    )
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: signals.append(number))  # no locks in a handler
    click.echo(f"worker {worker.worker_id}: pulling from {dispatcher_url}", err=True)
    report = worker.run(threading.Event(), signalled=lambda: bool(signals))
    click.echo(
        f"worker {worker.worker_id}: stopped; {report.done} done, {report.failed} failed, "
        f"{report.handed_back} handed back",
        err=True,
    )
