"""``stager s3 ...``: the embedded S3 server."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

import click

from stager.cli.context import CliState
from stager.errors import ConfigError
from stager.locations import S3Url
from stager.s3errors import translating
from stager.s3server import LocalS3Server


@click.group("s3")
def s3_group() -> None:
    """The embedded S3 server (SeaweedFS) for trying stager on one machine."""


@s3_group.command(
    "serve",
    epilog="""\b
Examples:
  stager s3 serve                      # temporary data, random port
  stager s3 serve --dir ./s3data --port 8333 --bucket my-bucket
""",
)
@click.option(
    "--dir",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the server keeps its data [a temporary directory].",
)
@click.option("--port", type=int, help="S3 port on 127.0.0.1 [a free one].")
@click.option(
    "--bucket", "buckets", multiple=True, help="Create this bucket at start (repeatable)."
)
def serve(data_dir: Path | None, port: int | None, buckets: tuple[str, ...]) -> None:
    """Run a local S3 server on 127.0.0.1 until Ctrl-C.

    Prints the endpoint and the environment to export so that stager (and
    aws cli, boto3, s5cmd, rclone) can reach it. Access keys are new at
    every start.
    """
    for bucket in buckets:  # a bad name is a usage error, before anything starts
        S3Url.parse(f"s3://{bucket}/")
    # Started in the background by a shell, a process inherits SIGINT ignored;
    # `kill -INT` must still stop this server, as Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="stager-s3-") as scratch:
        server = LocalS3Server(data_dir or Path(scratch), s3_port=port)
        with server:
            with translating(f"s3://{','.join(buckets)}/", "create bucket"):
                server.ensure_buckets(buckets)
            click.echo(f"S3 endpoint {server.endpoint_url} (data in {server.data_dir})")
            click.echo("export these to use it:")
            for name, value in server.env().items():
                click.echo(f"  export {name}={value}")
            click.echo("Ctrl-C stops the server.")
            try:
                signal.pause()
            except KeyboardInterrupt:
                click.echo("stopping the S3 server")


@s3_group.command(
    "gc",
    epilog="""\b
Examples:
  stager s3 gc s3://my-bucket/run1/ --dry-run
  stager s3 gc s3://my-bucket/ --older-than 6h
""",
)
@click.argument("prefix")
@click.option(
    "--older-than",
    default="1h",
    show_default=True,
    help="Only uploads begun this long ago (s, m, h, d): a younger one may still be running.",
)
@click.option("--dry-run", is_flag=True, help="List what would be aborted; abort nothing.")
@click.pass_obj
def gc(core: CliState, /, prefix: str, older_than: str, dry_run: bool) -> None:
    """Abort multipart uploads left incomplete under PREFIX (by killed processes).

    Their parts take space (and cost money) until they are aborted; S3 keeps
    them forever unless a lifecycle rule says otherwise.
    """
    url = S3Url.parse(prefix)
    cutoff = time.time() - parse_duration(older_than)
    store = core.object_store()
    found = [u for u in store.incomplete_uploads(url) if u.initiated_at <= cutoff]
    for upload in found:
        if not dry_run:
            store.abort_upload(upload)
        click.echo(f"{'would abort' if dry_run else 'aborted'}  {upload.url}")
    verb = "would be aborted" if dry_run else "aborted"
    click.echo(f"{len(found)} incomplete uploads older than {older_than} {verb}")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``6h``, ``2d`` as seconds; anything else is a ConfigError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{text!r} is not a duration", hint="give it like 90s, 15m, 6h or 2d")
    return value * units[unit]
