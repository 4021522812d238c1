"""Stage-in through the node cache: cold, warm, and what the digest costs.

Usage:  .venv/bin/python bench/cache_stagein.py [--large-mib 1024] [--small-count 1000]

Against the embedded server: pushes one large file and many 64 KiB files,
then measures, in this process,
- cold stage-in of the large file into an empty cache (MB/s);
- warm stage-in (cache hit, hard link into a new sandbox) per file, for the
  large file and for the small files;
- the digest's cost: hashing the same number of bytes in 256 KiB pieces
  (as the stream delivers them), as a share of the cold stage-in time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from fsd.cache import NodeCache
from fsd.stagein import StageInput, staged_inputs
from stager.digest import Hasher
from stager.digestcache import DigestCache
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.push import push
from stager.s3server import LocalS3Server

MiB = 1024 * 1024


def write_files(root: Path, large_mib: int, small_count: int) -> None:
    (root / "large").mkdir(parents=True)
    with (root / "large" / "one.bin").open("wb") as out:
        for _ in range(large_mib):
            out.write(os.urandom(MiB))
    (root / "small").mkdir()
    for n in range(small_count):
        (root / "small" / f"f{n:05d}.bin").write_bytes(os.urandom(64 * 1024))


def specs(store: ObjectStore, digests: DigestCache, source: Path, dest: S3Url) -> list[StageInput]:
    report = push([str(source)], dest, store=store, digests=digests, show_progress=False)
    return [StageInput(e.url, e.path, e.digest, e.size) for e in report.manifest.entries]


def stage_seconds(
    inputs: list[StageInput], sandbox: Path, cache: NodeCache, store: ObjectStore
) -> float:
    started = time.perf_counter()
    with staged_inputs(inputs, sandbox, cache=cache, store=store, workers=16):
        pass
    return time.perf_counter() - started


def digest_seconds(size: int) -> float:
    piece = os.urandom(256 * 1024)
    hasher = Hasher()
    started = time.perf_counter()
    for _ in range(size // len(piece)):
        hasher.update(piece)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--small-count", type=int, default=1000)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stager-cache-bench-"))
    try:
        write_files(root / "src", options.large_mib, options.small_count)
        with LocalS3Server(root / "s3") as server:
            settings = server.settings(state_dir=root / "state", progress=False)
            with (
                ObjectStore(settings, credentials=server.credentials) as store,
                DigestCache(None) as digests,
            ):
                store.ensure_bucket("bench")
                large = specs(store, digests, root / "src" / "large", S3Url("bench", "l/"))
                small = specs(store, digests, root / "src" / "small", S3Url("bench", "s/"))
                cache = NodeCache(root / "cache", quota_bytes=8 * 1024**3)
                size = large[0].size or 0
                cold = stage_seconds(large, root / "t1", cache, store)
                warm = stage_seconds(large, root / "t2", cache, store)
                cold_small = stage_seconds(small, root / "t3", cache, store)
                warm_small = stage_seconds(small, root / "t4", cache, store)
        hashing = digest_seconds(size)
        print(f"cold stage-in, {size / MiB:.0f} MiB: {cold:.2f} s, {size / cold / 1e6:.1f} MB/s")
        print(f"warm stage-in, {size / MiB:.0f} MiB file: {warm * 1000:.2f} ms")
        n = len(small)
        print(f"cold stage-in, {n} x 64 KiB: {cold_small:.2f} s, {n / cold_small:.0f} files/s")
        print(f"warm stage-in, {n} x 64 KiB: {warm_small * 1000 / n:.3f} ms per file")
        print(
            f"digest of {size / MiB:.0f} MiB: {hashing:.3f} s, "
            f"{100 * hashing / cold:.1f} % of the cold stage-in"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
