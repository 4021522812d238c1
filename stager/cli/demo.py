"""``stager demo``: the main job on the embedded default."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from stager.demo import run_demo


@click.command(
    "demo",
    epilog="""\b
Examples:
  stager demo                      # in a temporary directory, removed afterwards
  stager demo --work-dir ./demo    # keep the data, the node copy and the server log
""",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep everything here instead of a temporary directory.",
)
def demo(work_dir: Path | None) -> None:
    """Run the whole data path on this machine with the embedded S3 server.

    Starts SeaweedFS on 127.0.0.1, pushes a generated dataset, pushes it
    again (nothing is re-sent), pulls it to a node directory and verifies
    every file against the pushed digests; then stops the server.
    """
    if work_dir is not None:
        run_demo(work_dir, echo=click.echo)
        return
    with tempfile.TemporaryDirectory(prefix="stager-demo-") as scratch:
        run_demo(Path(scratch), echo=click.echo)


commands = [demo]
