"""A Parsl workflow on S3 with stager's staging provider: fan-out, a shared reference, fan-in.

Every ``align`` task reads the same reference and one sample and writes one
result; ``gather`` reads every result and writes a summary. All files are
``s3://`` ``File``\\ s: stager stages them on the worker nodes (the reference
once per node, whatever the number of tasks there) and uploads outputs with
their digests before each task counts as done.

Run it against any S3 endpoint (credentials and endpoint from the usual
``AWS_*`` variables), after ``python -m worker_hooks.parsl.example --make-data``::

    python -m worker_hooks.parsl.example BUCKET [--samples 16]

Here two blocks of a LocalProvider stand in for two nodes, each with its own
cache (``$PARSL_WORKER_BLOCK_ID`` differs between them). docs/parsl.md shows
the same workflow on EC2 and on Slurm.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import parsl
from parsl.app.app import bash_app
from parsl.config import Config
from parsl.data_provider.files import File
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from worker_hooks.parsl import NodeOptions, register_memo, stager_storage

REFERENCE = "reference/genome.bin"


@bash_app
def align(inputs: Sequence[File] = (), outputs: Sequence[File] = ()) -> str:
    reference, sample = inputs
    return f"cat {reference} {sample} | cksum > {outputs[0]}"


@bash_app
def gather(inputs: Sequence[File] = (), outputs: Sequence[File] = ()) -> str:
    return "cat " + " ".join(str(f) for f in inputs) + f" > {outputs[0]}"


def local_config(
    run_dir: str, storage: list[Any] | None = None, *, blocks: int = 2, workers: int = 2
) -> Config:
    """Blocks on this machine standing in for nodes (two, of two workers each), a cache
    per block; ``storage``: another ``storage_access`` list than stager's."""
    node = NodeOptions(cache_dir=f"{run_dir}/node-$PARSL_WORKER_BLOCK_ID/cache", cache_quota="4G")
    executor = HighThroughputExecutor(
        label="nodes",
        max_workers_per_node=workers,
        cores_per_worker=1e-6,
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        provider=LocalProvider(init_blocks=blocks, min_blocks=blocks, max_blocks=blocks),  # type: ignore[no-untyped-call]
        storage_access=stager_storage(node) if storage is None else storage,
    )
    return Config(executors=[executor], run_dir=run_dir, retries=2, usage_tracking=0)


def run(bucket: str, samples: int) -> float:
    """The workflow; its makespan in seconds (the summary's future done)."""
    started = time.perf_counter()
    reference = File(f"s3://{bucket}/{REFERENCE}")
    aligned = [
        align(
            inputs=[reference, File(f"s3://{bucket}/samples/{n}.bin")],
            outputs=[File(f"s3://{bucket}/aligned/{n}.txt")],
        )
        for n in range(samples)
    ]
    summary = gather(
        inputs=[task.outputs[0] for task in aligned],
        outputs=[File(f"s3://{bucket}/summary.txt")],
    )
    summary.outputs[0].result()
    return time.perf_counter() - started


def make_data(bucket: str, samples: int, reference_mib: int = 64, sample_mib: int = 1) -> None:
    """The inputs, uploaded as any tool would (no stager metadata)."""
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=REFERENCE, Body=os.urandom(reference_mib * 1024 * 1024))
    for n in range(samples):
        s3.put_object(Bucket=bucket, Key=f"samples/{n}.bin", Body=os.urandom(sample_mib << 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bucket")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--run-dir", default="runinfo")
    parser.add_argument("--make-data", action="store_true", help="upload the inputs and stop")
    args = parser.parse_args()
    if args.make_data:
        make_data(args.bucket, args.samples)
        return
    register_memo()
    with parsl.load(local_config(os.path.abspath(args.run_dir))):
        seconds = run(args.bucket, args.samples)
    print(f"{args.samples} samples aligned and gathered in {seconds:.1f} s")


if __name__ == "__main__":
    main()
