"""``stager wrap``: one job command with stage-in and stage-out around it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fsd.materialize import Materialize
from stager.cli.context import CliState
from stager.errors import ConfigError
from worker_hooks.task.documents import load_document
from worker_hooks.task.parse import inline_spec, parse_spec, split_pair
from worker_hooks.task.spec import TaskSpec
from worker_hooks.wrap.environment import checked_names
from worker_hooks.wrap.node import CACHE_FLAGS, WRAP_FLAGS, open_node
from worker_hooks.wrap.wrapper import WrapOptions, wrap_task

Command = TypeVar("Command", bound=Callable[..., Any])


def take_node_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Take the values of :func:`node_options` out of a command's ``flags``."""
    return {name: flags.pop(name) for name in (*CACHE_FLAGS, *WRAP_FLAGS)}


def pass_env_option(text: str) -> Callable[[Command], Command]:
    """``--pass-env NAME`` (repeatable), checked: see :mod:`worker_hooks.wrap.environment`."""
    return click.option(
        "--pass-env",
        multiple=True,
        metavar="NAME",
        callback=lambda ctx, param, names: checked_names(names),
        help=text,
    )


def node_options(function: Any) -> Any:
    """The options that say where a node keeps its cache and sandboxes."""
    for option in reversed(
        [
            click.option(
                "--cache-dir",
                type=click.Path(file_okay=False, path_type=Path),
                help="Node cache root [$STAGER_CACHE_DIR or ~/.cache/stager/node-cache].",
            ),
            click.option("--cache-quota", help="Bytes the cache may hold, e.g. 100G."),
            click.option(
                "--sandbox-dir",
                type=click.Path(file_okay=False, path_type=Path),
                help="Where task sandboxes are made [~/.cache/stager/sandboxes].",
            ),
            click.option(
                "--materialize",
                type=click.Choice([m.value for m in Materialize]),
                help="How inputs appear in the sandbox [link].",
            ),
            click.option(
                "--nfs-head",
                type=click.Path(file_okay=False, path_type=Path),
                help="A shared cache on a mount, read before S3 [none].",
            ),
        ]
    ):
        function = option(function)
    return function


# Inline task flags (dest -> the option's name); the task id has a default.
_INLINE_FLAGS = {
    "inputs": "--in",
    "outputs": "--out",
    "env": "--env",
    "timeout_s": "--timeout",
    "shell": "--shell",
    "bundle": "--bundle",
    "results": "--results",
}


def _spec_from_flags(
    spec_path: Path | None, command: tuple[str, ...], flags: dict[str, Any]
) -> TaskSpec:
    if spec_path is not None:
        inline = [name for name in _INLINE_FLAGS if flags[name]] + (["command"] if command else [])
        if inline:
            raise ConfigError(
                f"--spec FILE cannot be combined with {_INLINE_FLAGS.get(inline[0], 'a command')}",
                hint="put the setting in the spec file, or describe the task inline only",
            )
        return parse_spec(load_document(spec_path))
    if not command:
        raise ConfigError("no command to run", hint="give --spec FILE, or the command after '--'")
    env = dict(split_pair(text, "--env") for text in flags["env"])
    return inline_spec(
        command=command,
        inputs=flags["inputs"],
        outputs=flags["outputs"],
        task_id=flags["task_id"],
        env=env or None,
        shell=flags["shell"] or None,
        timeout_s=flags["timeout_s"],
        bundle={"source": flags["bundle"]} if flags["bundle"] else None,
        results=flags["results"],
    )


@click.command(
    "wrap",
    epilog="""\b
Examples:
  stager wrap --spec task.json
  stager wrap --in s3://b/ref.fa=ref.fa --out result.txt=s3://b/out/result.txt -- ./align ref.fa
  stager wrap --in s3://b/in/x.csv=x.csv --out 'plots/*.png=s3://b/out/plots/' \\
      --timeout 600 --shell -- 'python plot.py x.csv > plots/log.txt'

\b
Exit codes: 0 done (outputs durable, result recorded); 10 the command failed;
11 an output is missing; 12 timeout; 13 stage-out failed (run again);
2-9 as for every stager command (bad spec, missing input, credentials, ...).
""",
)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Task spec (JSON, or YAML by extension); see docs/task-spec.md.",
)
@click.option("--in", "inputs", multiple=True, help="Input SOURCE=SANDBOX_PATH (repeatable).")
@click.option(
    "--out", "outputs", multiple=True, help="Output SANDBOX_PATH=DESTINATION (repeatable)."
)
@click.option("--id", "task_id", default="task", show_default=True, help="Task id.")
@click.option("--env", multiple=True, help="NAME=VALUE for the command (repeatable).")
@click.option("--timeout", "timeout_s", type=float, help="Seconds before the command is killed.")
@click.option("--shell", is_flag=True, help="Run the command through /bin/sh -c.")
@click.option("--bundle", help="Application archive in S3, shown in the sandbox at app/.")
@click.option("--results", help="Prefix for result manifests and logs [beside the first output].")
@pass_env_option("Give the command this variable of yours (repeatable); it gets a clean one.")
@click.option("--force", is_flag=True, help="Run even if a result for this task exists.")
@click.option("--keep-failed", is_flag=True, help="Keep the sandbox of a failed task.")
@node_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def wrap_command(
    core: CliState,
    /,
    spec_path: Path | None,
    command: tuple[str, ...],
    force: bool,
    keep_failed: bool,
    pass_env: tuple[str, ...],
    **flags: Any,
) -> None:
    """Run one job: stage its inputs in, run it in a sandbox, make its outputs durable.

    Inputs come through the node's cache (one fetch per node); the command
    runs in a fresh sandbox with its own process group; outputs go to S3
    with their digests, and the task's result manifest is written last. A
    task whose result already exists (same command, same input digests) is
    not run again.
    """
    node_flags = take_node_flags(flags)
    spec = _spec_from_flags(spec_path, command, flags)
    node = open_node(core, node_flags)
    node.tidy(lambda line: click.echo(line, err=True))  # after a wrapper killed here before
    options = WrapOptions(
        force=force,
        keep_failed=keep_failed,
        live=sys.stdout.isatty(),
        pass_env=pass_env,
    )
    result = wrap_task(spec, node, options)
    manifest = result.manifest
    if result.memoized:
        click.echo(
            f"task {spec.id}: already done, not run again; result {result.result_url}", err=True
        )
        return
    timings = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in manifest.timings_s.items())
    click.echo(
        f"task {spec.id}: done, {len(manifest.outputs)} outputs durable ({timings}); "
        f"result {result.result_url}",
        err=True,
    )
