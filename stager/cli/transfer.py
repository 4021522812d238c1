"""``stager push`` and ``stager pull``."""

from __future__ import annotations

from pathlib import Path

import click

from stager.cli.context import CliState
from stager.locations import S3Url
from stager.units import format_rate, format_size

# push and pull import their own modules when run: each is a command of its own
# (push brings fsspec, ~40 ms, which a pull does not need).


@click.command(
    epilog="""\b
Examples:
  stager push ref.fa --to s3://my-bucket/run1/
  stager push inputs/ ref.fa --to s3://my-bucket/run1/ --manifest run1.json
  stager push https://example.org/data/table.csv --to s3://my-bucket/tables/
"""
)
@click.argument("sources", nargs=-1, required=True)
@click.option("--to", "dest", required=True, help="Destination prefix, s3://bucket/prefix/.")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the push manifest (JSON) to this local file.",
)
@click.option(
    "--verify-remote",
    is_flag=True,
    help="Read back objects that look unchanged and re-upload any whose bytes differ.",
)
@click.pass_obj
def push_command(
    state: CliState,
    sources: tuple[str, ...],
    dest: str,
    manifest_path: Path | None,
    verify_remote: bool,
) -> None:
    """Push files and directories to S3, skipping what is already there.

    Each SOURCE (a path, or any fsspec URL) keeps its base name below the
    destination prefix; directories are pushed recursively. A file whose
    object already exists with the same digest is not uploaded again. The
    manifest (path, key, size, digest of every file) is stored in the
    bucket under .stager/manifests/.
    """
    from stager.push import push, write_local_manifest

    report = push(
        list(sources),
        S3Url.parse(dest),
        store=state.object_store(),
        digests=state.digest_cache(),
        show_progress=state.settings.progress,
        verify_remote=verify_remote,
    )
    if manifest_path is not None:
        write_local_manifest(report.manifest, manifest_path)
    files = len(report.manifest.entries)
    click.echo(
        f"pushed {files} files ({format_size(report.total_bytes)}): "
        f"uploaded {report.uploaded_files} ({format_size(report.uploaded_bytes)}), "
        f"skipped {report.skipped_files} unchanged, in {report.seconds:.2f} s "
        f"({format_rate(report.uploaded_bytes, report.seconds)}); manifest {report.manifest_url}"
    )


@click.command(
    epilog="""\b
Examples:
  stager pull s3://my-bucket/run1/ ./staged/          # a whole prefix
  stager pull s3://my-bucket/run1/ref.fa ./ref.fa     # one object to a file
  stager pull s3://my-bucket/run1/ref.fa ./inputs/    # one object into a directory
  stager pull --fsync s3://my-bucket/run1/ /data/run1/  # on disk before it says done
"""
)
@click.argument("source")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--fsync",
    is_flag=True,
    help="Sync each file to disk before counting it pulled, so an operating-system crash "
    "cannot lose it (a file is whole or absent either way).",
)
@click.pass_obj
def pull_command(state: CliState, source: str, dest: Path, fsync: bool) -> None:
    """Pull an object or a prefix from S3, verifying every byte.

    A file takes its final name only after its digest matches the one
    recorded at push time; objects written by other tools (no digest) are
    hashed as they arrive and reported as unverified. Files already present
    with the right digest are not downloaded again. Like cp, aws s3 cp and
    s5cmd, it leaves syncing to the operating system unless --fsync.
    """
    from stager.pull import pull

    report = pull(
        S3Url.parse(source),
        dest,
        store=state.object_store(),
        digests=state.digest_cache(),
        dest_is_dir=dest.is_dir() or str(dest).endswith("/"),
        show_progress=state.settings.progress,
        fsync=fsync,
    )
    for unverified in report.unverified:
        click.echo(f"unverified (no digest recorded): {unverified.path} {unverified.digest}")
    click.echo(
        f"pulled {len(report.files)} files: downloaded "
        f"{len(report.files) - report.skipped_files} ({format_size(report.downloaded_bytes)}), "
        f"skipped {report.skipped_files} up to date, {len(report.unverified)} unverified, "
        f"in {report.seconds:.2f} s ({format_rate(report.downloaded_bytes, report.seconds)})"
    )


push_command.name = "push"
pull_command.name = "pull"
