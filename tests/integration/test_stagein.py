"""Stage-in through the node cache against the real S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fsd.cache import NodeCache
from fsd.materialize import Materialize
from fsd.stagein import StageInput, Tier, staged_inputs
from stager.digest import digest_bytes
from stager.digestcache import DigestCache
from stager.errors import UnsafePathError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.push import push
from stager.s3server import LocalS3Server
from tests.helpers import count_requests, files_under, write_random

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def pushed_inputs(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url, sizes: list[int]
) -> list[StageInput]:
    for n, size in enumerate(sizes):
        write_random(tmp_path / "frontend" / "in" / f"f{n}.bin", size)
    report = push([str(tmp_path / "frontend" / "in")], prefix, store=store, digests=digests)
    return [
        StageInput(
            source=S3Url.parse(e.url),
            path=f"inputs/{Path(e.path).name}",
            digest=e.digest,
            size=e.size,
        )
        for e in report.manifest.entries
    ]


def test_second_task_on_a_node_reads_from_the_cache_only(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    inputs = pushed_inputs(tmp_path, store, digests, prefix, [10, 100 * 1024, 7 * MiB])
    cache = NodeCache(tmp_path / "cache", quota_bytes=100 * MiB)
    with staged_inputs(inputs, tmp_path / "task1", cache=cache, store=store) as first:
        assert {s.tier for s in first} == {Tier.S3}
        assert all(s.verified and s.materialized_as is Materialize.LINK for s in first)
    calls = count_requests(store)
    with staged_inputs(inputs, tmp_path / "task2", cache=cache, store=store) as second:
        assert {s.tier for s in second} == {Tier.LOCAL}
    assert calls["GetObject"] == 0 and calls["HeadObject"] == 0
    for one, two in zip(first, second, strict=True):
        assert one.path.read_bytes() == two.path.read_bytes()
        assert digest_bytes(two.path.read_bytes()) == two.digest
        assert one.path.stat().st_ino == two.path.stat().st_ino  # both hard links of one entry


def test_inputs_without_digest_or_size_are_resolved_by_head(
    tmp_path: Path, store: ObjectStore, prefix: S3Url, raw_client: Any
) -> None:
    raw_client.put_object(Bucket=prefix.bucket, Key=prefix.child("foreign").key, Body=b"other tool")
    cache = NodeCache(tmp_path / "cache", quota_bytes=MiB)
    spec = [StageInput(source=prefix.child("foreign"), path="x")]
    with staged_inputs(spec, tmp_path / "task", cache=cache, store=store) as staged:
        assert staged[0].digest == digest_bytes(b"other tool")
        assert staged[0].verified is False
        assert (tmp_path / "task" / "x").read_bytes() == b"other tool"


def test_a_spec_path_that_escapes_is_refused_before_any_io(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    cache = NodeCache(tmp_path / "cache", quota_bytes=MiB)
    calls = count_requests(store)
    spec = [StageInput(source=prefix.child("a"), path="../../etc/passwd")]
    with (
        pytest.raises(UnsafePathError, match="input 1 path"),
        staged_inputs(spec, tmp_path / "task", cache=cache, store=store),
    ):
        pass
    assert sum(calls.values()) == 0
    assert files_under(tmp_path / "task") == []


def test_32_processes_fetching_one_object_download_it_once(
    tmp_path: Path,
    store: ObjectStore,
    digests: DigestCache,
    prefix: S3Url,
    s3_server: LocalS3Server,
) -> None:
    [spec] = pushed_inputs(tmp_path, store, digests, prefix, [256 * MiB])
    assert spec.digest is not None and spec.size is not None
    cache_dir = tmp_path / "cache"
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(REPO)}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.stagein_child",
                str(cache_dir),
                str(tmp_path / f"t{n}"),
                str(spec.source),
                str(spec.digest),
                str(spec.size),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(32)
    ]
    results = [child.communicate(timeout=240) for child in children]
    failed = [
        err[-2000:] for child, (_, err) in zip(children, results, strict=True) if child.returncode
    ]
    assert not failed, failed[:2]
    inodes = {out.split()[0] for out, _ in results}
    tiers = Counter(out.split()[1] for out, _ in results)
    cache = NodeCache(cache_dir, quota_bytes=4 * 1024**3)
    assert cache.stats().fetches == 1  # one transfer for 32 requests
    assert len(inodes) == 1  # every sandbox links the one entry
    # Only the one that fetched reports S3; those that waited on its flight got a cache hit.
    assert tiers == {"s3": 1, "local": 31}
    entry = cache.lookup(spec.digest)
    assert entry is not None and digest_bytes(entry.read_bytes()) == spec.digest


def test_an_input_on_the_nfs_head_is_copied_from_there_not_from_s3(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    [spec] = pushed_inputs(tmp_path, store, digests, prefix, [300 * 1024])
    assert spec.digest is not None and spec.size is not None
    head = NodeCache(tmp_path / "nfs-head", quota_bytes=MiB)
    with staged_inputs([spec], tmp_path / "warm-head", cache=head, store=store):
        pass  # the head now holds the input
    local = NodeCache(tmp_path / "node-cache", quota_bytes=MiB)
    calls = count_requests(store)
    with staged_inputs(
        [spec], tmp_path / "task", cache=local, store=store, nfs_head=head
    ) as staged:
        assert staged[0].tier is Tier.NFS_HEAD
        assert digest_bytes(staged[0].path.read_bytes()) == spec.digest
    assert calls["GetObject"] == 0
    assert local.lookup(spec.digest) is not None
