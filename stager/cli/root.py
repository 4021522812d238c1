"""The ``stager`` command: the root group, global options and error handling.

Every :class:`~stager.errors.StagerError` ends the command with one line on
stderr (what went wrong, what to do) and the error's exit code; ``--debug``
(or ``STAGER_DEBUG=1``) adds the traceback. Commands of the ``fsd`` and
``worker_hooks`` packages join through the ``stager.commands`` entry point
group, so this package never imports them.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from importlib import import_module
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from stager import __version__
from stager.cli.context import CliState
from stager.errors import StagerError
from stager.settings import VARIABLES, unknown_variables

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

VARIABLES_GROUP = "stager.variables"
# The core's own commands, by name: "module:attribute", imported when used.
CORE_COMMANDS = {
    "push": "stager.cli.transfer:push_command",
    "pull": "stager.cli.transfer:pull_command",
    "s3": "stager.cli.s3:s3_group",
}

INTERNAL_ERROR_EXIT = 70
INTERRUPTED_EXIT = 130


class _LazyGroup(click.Group):
    """A group whose commands, the core's and plug-ins' (entry points), are imported
    only when used.

    Importing every command module costs every invocation its imports (boto3,
    the native S3 client, the dispatcher's HTTP server); ``stager wrap`` runs
    once per task, and ``stager --version`` should answer at once.
    """

    def _plugins(self) -> dict[str, EntryPoint]:
        from importlib.metadata import entry_points  # itself slow to import

        return {entry.name: entry for entry in entry_points(group="stager.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *CORE_COMMANDS, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if cmd_name in CORE_COMMANDS:
            module, _, name = CORE_COMMANDS[cmd_name].partition(":")
            core: click.Command = getattr(import_module(module), name)
            return core
        if (entry := self._plugins().get(cmd_name)) is not None:
            loaded: click.Command = entry.load()
            return loaded
        return None


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  stager s3 serve --dir ./s3data        # a local S3 server for trying things out
  stager push inputs/ ref.fa --to s3://my-bucket/run1/
  stager pull s3://my-bucket/run1/ ./staged/
  stager demo                           # everything on this machine, end to end
  stager --sse aws:kms --sse-kms-key-id alias/lab push results/ --to s3://my-bucket/run1/
""",
)
@click.version_option(__version__, prog_name="stager")
@click.option(
    "--config", type=click.Path(path_type=Path), help="TOML settings file [./stager.toml]."
)
@click.option("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:8333 [AWS chain].")
@click.option("--profile", help="AWS profile from ~/.aws.")
@click.option("--region", help="S3 region.")
@click.option("--part-size", "part_size_bytes", help="Multipart part size, e.g. 16M [8M].")
@click.option("--max-concurrency", type=int, help="Parallel requests per transfer [10].")
@click.option("--files-in-flight", type=int, help="Files transferred at once [16].")
@click.option(
    "--storage-class", help="Storage class of objects written, e.g. STANDARD_IA [the bucket's]."
)
@click.option(
    "--sse",
    type=click.Choice(["AES256", "aws:kms"], case_sensitive=False),
    help="Server-side encryption of objects written: AES256 (SSE-S3) or aws:kms (SSE-KMS).",
)
@click.option("--sse-kms-key-id", help="KMS key id, ARN or alias, with --sse aws:kms.")
@click.option(
    "--requester-pays",
    is_flag=True,
    default=None,
    help="Accept the charges of a requester-pays bucket.",
)
@click.option("--no-progress", is_flag=True, help="Never draw progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(
    ctx: click.Context, /, config: Path | None, no_progress: bool, debug: bool, **flags: object
) -> None:
    """Stage data for many-task workflows: frontend -> S3 -> node -> task, verified on every hop."""
    if no_progress:
        flags["progress"] = False
    ctx.obj = CliState(flags=flags, config_path=config)
    ctx.call_on_close(ctx.obj.close)


def _warn_of_unknown_variables() -> None:
    """One line per ``STAGER_*`` variable nothing reads (a typo is otherwise silent)."""
    if not any(n.startswith("STAGER_") and n not in VARIABLES for n in os.environ):
        return  # the usual case: nothing to look up
    # The names alone: nothing is imported (this runs before every command).
    from importlib.metadata import entry_points

    known = VARIABLES | {entry.name for entry in entry_points(group=VARIABLES_GROUP)}
    for name, closest in unknown_variables(os.environ, known):
        guess = f"; did you mean {closest}?" if closest else ""
        click.echo(
            f"stager: warning: {name} is not a stager variable and is ignored{guess}", err=True
        )


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("STAGER_DEBUG", "") not in ("", "0")


_terminated: list[int] = []


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A batch system or `timeout` ends jobs with SIGTERM: unwind like Ctrl-C so
    # that servers we started are stopped and temp files are removed. Python
    # drops an exception raised while a __del__ or weakref callback runs, so
    # the signal is also recorded and main() reports it whatever happened.
    _terminated.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    _warn_of_unknown_variables()
    try:
        result = cli.main(args=args, prog_name="stager", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("stager: interrupted", err=True)
        sys.exit(INTERRUPTED_EXIT)
    except StagerError as exc:
        if _debug_requested(args):
            traceback.print_exc()
        click.echo(f"stager: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _debug_requested(args):
            traceback.print_exc()
        click.echo(
            f"stager: internal error: {exc.__class__.__name__}: {exc} "
            "(run again with --debug and report the traceback)",
            err=True,
        )
        sys.exit(INTERNAL_ERROR_EXIT)
    if _terminated:
        click.echo("stager: interrupted (after the step that was running)", err=True)
        sys.exit(INTERRUPTED_EXIT)
    sys.exit(result if isinstance(result, int) else 0)
