"""The demo: the whole core data path on one machine, against the embedded server.

It starts SeaweedFS on loopback, generates a small dataset (one shared
reference file and many per-task inputs, the shape of a many-task
workflow), pushes it, pushes it again (nothing is re-sent), pulls it onto a
"node" directory, and checks every pulled file against the digest recorded
at push time. Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stager.digestcache import DigestCache
from stager.errors import IntegrityError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.pull import pull
from stager.push import push
from stager.s3server import LocalS3Server
from stager.units import format_rate, format_size

BUCKET = "stager-demo"


@dataclass(frozen=True)
class DemoShape:
    reference_bytes: int = 64 * 1024 * 1024
    task_inputs: int = 200
    task_input_bytes: int = 16 * 1024


def generate_dataset(root: Path, shape: DemoShape) -> Path:
    """Write the frontend's dataset under ``root``; return its directory."""
    dataset = root / "dataset"
    (dataset / "inputs").mkdir(parents=True, exist_ok=True)
    with (dataset / "reference.bin").open("wb") as out:
        remaining = shape.reference_bytes
        while remaining:
            chunk = min(remaining, 4 * 1024 * 1024)
            out.write(os.urandom(chunk))
            remaining -= chunk
    for index in range(shape.task_inputs):
        payload = os.urandom(shape.task_input_bytes)
        (dataset / "inputs" / f"task-{index:04d}.dat").write_bytes(payload)
    return dataset


def run_demo(
    work_dir: Path, *, echo: Callable[[str], None], shape: DemoShape | None = None
) -> None:
    """Run the round trip in ``work_dir``; raise a StagerError if anything is off."""
    shape = shape or DemoShape()
    echo(f"starting the embedded S3 server (data in {work_dir / 's3'})")
    with LocalS3Server(work_dir / "s3") as server:
        echo(f"S3 endpoint {server.endpoint_url}")
        settings = server.settings(state_dir=work_dir / "state", progress=True)
        with (
            ObjectStore(settings, credentials=server.credentials) as store,
            DigestCache(settings.state_dir / "digests.sqlite") as digests,
        ):
            store.ensure_bucket(BUCKET)
            dataset = generate_dataset(work_dir / "frontend", shape)
            dest = S3Url(BUCKET, "run1/")
            first = push([str(dataset)], dest, store=store, digests=digests)
            echo(
                f"push:    {len(first.manifest.entries)} files, uploaded {first.uploaded_files} "
                f"({format_size(first.uploaded_bytes)}) in {first.seconds:.2f} s, "
                f"{format_rate(first.uploaded_bytes, first.seconds)}"
            )
            again = push([str(dataset)], dest, store=store, digests=digests)
            echo(
                f"re-push: uploaded {again.uploaded_files}, skipped {again.skipped_files} "
                f"unchanged in {again.seconds:.2f} s"
            )
            node = work_dir / "node"
            pulled = pull(dest, node, store=store, digests=digests, dest_is_dir=True)
            echo(
                f"pull:    {len(pulled.files)} files ({format_size(pulled.downloaded_bytes)}) "
                f"in {pulled.seconds:.2f} s, {format_rate(pulled.downloaded_bytes, pulled.seconds)}"
            )
            recorded = {entry.url: entry.digest for entry in first.manifest.entries}
            checked = 0
            for file in pulled.files:
                if not file.verified or recorded.get(str(file.url)) != file.digest:
                    raise IntegrityError(f"demo: {file.path} does not match its pushed digest")
                checked += 1
            echo(f"verified {checked} of {len(recorded)} files against the push manifest")
            echo(f"manifest: {first.manifest_url}")
    echo("stopped the embedded S3 server; demo complete")
