"""``stager bench parsl``: the Parsl example workflow, staged by stager and by plain boto3.

worker_hooks/parsl/example.py (16 ``align`` tasks reading one 64 MiB reference and
a 1 MiB sample each, then a ``gather``) runs twice on a real
HighThroughputExecutor, two LocalProvider blocks standing in for two nodes,
against the embedded S3 server behind a recording proxy:

- with stager's staging provider (a cache per block);
- with a plain in-task provider that downloads each input with boto3 for
  every task and uploads each output (what a user would write without a
  cache).

Reported for each: the bytes read from S3 (the ranges of every GET the
proxy saw) and the makespan; and the ratios.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import parsl
from parsl.app.app import bash_app
from parsl.data_provider.data_manager import default_staging
from parsl.data_provider.files import File
from parsl.data_provider.staging import Staging

from bench.faultproxy import NO_FAULTS, FaultProxy, requested_bytes
from stager.locations import S3Url
from stager.s3server import LocalS3Server
from worker_hooks.parsl.example import local_config, make_data, run
from worker_hooks.parsl.staging import SCHEME, local_path_for

BUCKET = "bench-parsl"


@bash_app
def warm_up() -> str:
    return "true"


class PlainS3Staging(Staging):
    """In-task staging with boto3 and no cache: every task downloads its inputs."""

    def can_stage_in(self, file: File) -> bool:
        return bool(file.scheme == SCHEME)

    def can_stage_out(self, file: File) -> bool:
        return bool(file.scheme == SCHEME)

    def stage_in(self, dm: Any, executor: str, file: File, parent_fut: Any) -> None:
        file.local_path = local_path_for(S3Url.parse(file.url))

    def stage_out(self, dm: Any, executor: str, file: File, app_fu: Any) -> None:
        file.local_path = local_path_for(S3Url.parse(file.url))

    def replace_task(
        self, dm: Any, executor: str, file: File, func: Callable[..., Any]
    ) -> Callable[..., Any]:
        return PlainIn(func, file.url, str(file.local_path))

    def replace_task_stage_out(
        self, dm: Any, executor: str, file: File, func: Callable[..., Any]
    ) -> Callable[..., Any]:
        return PlainOut(func, file.url, str(file.local_path))


class PlainIn:
    def __init__(self, func: Callable[..., Any], url: str, local_path: str) -> None:
        self.func, self.url, self.local_path = func, S3Url.parse(url), Path(local_path)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.local_path.parent.mkdir(parents=True, exist_ok=True)
        boto3.client("s3").download_file(self.url.bucket, self.url.key, str(self.local_path))
        try:
            return self.func(*args, **kwargs)
        finally:
            shutil.rmtree(self.local_path.parent, ignore_errors=True)


class PlainOut(PlainIn):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.local_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = self.func(*args, **kwargs)
            boto3.client("s3").upload_file(str(self.local_path), self.url.bucket, self.url.key)
            return result
        finally:
            shutil.rmtree(self.local_path.parent, ignore_errors=True)


@dataclass(frozen=True)
class StagingFigures:
    provider: str
    seconds: float
    mib_from_s3: float


@dataclass(frozen=True)
class ParslStagingFigures:
    samples: int
    reference_mib: int
    runs: tuple[StagingFigures, ...]

    @property
    def plain_over_stager(self) -> dict[str, float]:
        """The plain provider's figures over stager's (above 1: stager reads or takes less)."""
        stager, plain = self.runs
        return {
            "seconds": round(plain.seconds / stager.seconds, 2),
            "mib_from_s3": round(plain.mib_from_s3 / stager.mib_from_s3, 2),
        }


def _read_bytes(seen: list[tuple[str, str, dict[str, str]]], sizes: dict[str, int]) -> int:
    return sum(
        requested_bytes(headers, sizes.get(path.split("?")[0], 0))
        for method, path, headers in seen
        if method == "GET"
    )


def run_parsl_staging_bench(work: Path, *, samples: int, reference_mib: int) -> ParslStagingFigures:
    runs = []
    saved = dict(os.environ)
    with LocalS3Server(work / "s3") as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        os.environ.update(server.env())
        make_data(BUCKET, samples, reference_mib=reference_mib)
        sizes = {
            f"/{BUCKET}/{o['Key']}": o["Size"]
            for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]
        }
        try:
            for name, storage in (
                ("stager", None),
                ("plain-boto3", [PlainS3Staging(), *default_staging]),
            ):
                proxy = FaultProxy(server.endpoint_url, NO_FAULTS)
                os.environ["AWS_ENDPOINT_URL"] = proxy.start()
                os.environ["STAGER_STATE_DIR"] = str(work / name / "state")
                os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved['PATH']}"
                os.environ["PYTHONPATH"] = str(Path(__file__).parents[1])
                try:
                    with parsl.load(local_config(str(work / name), storage)):
                        for ready in [warm_up() for _ in range(8)]:  # both blocks are up
                            ready.result()
                        seconds = run(BUCKET, samples)
                finally:
                    proxy.stop()
                read = _read_bytes(proxy.seen, sizes)
                runs.append(StagingFigures(name, round(seconds, 2), round(read / 2**20, 1)))
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return ParslStagingFigures(samples, reference_mib, tuple(runs))
