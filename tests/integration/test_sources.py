"""Objects that stager did not write (no digest anywhere): cached, single-flighted, found again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fsd.cache import NodeCache
from fsd.sources import Source
from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.helpers import count_requests
from worker_hooks.dispatch.follow import wait_for_workflow
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.spec import TaskSpec, task_of
from worker_hooks.wrap.node import Node
from worker_hooks.wrap.wrapper import wrap_task

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def test_sixteen_processes_fetch_an_object_without_a_digest_once(
    tmp_path: Path, prefix: S3Url, raw_client: Any, s3_server: LocalS3Server
) -> None:
    url = prefix.child("reference/genome.fa")
    data = os.urandom(20 * MiB)
    raw_client.put_object(Bucket=url.bucket, Key=url.key, Body=data)  # plain boto3: no digest
    env = {**os.environ, **s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    command = [sys.executable, "-m", "stager", "cache", "--cache-dir", str(tmp_path / "cache")]
    children = [
        subprocess.Popen(
            [*command, "fetch", str(url)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(16)
    ]
    outputs = [child.communicate(timeout=240)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    # Each line: digest, size (two words), tier, URL.
    tiers = [line.split()[-2] for out in outputs for line in out.splitlines() if str(url) in line]
    assert sorted(tiers) == ["local"] * 15 + ["s3"]  # one transfer; the others found its entry
    assert all(str(digest_bytes(data)) in out for out in outputs)
    stats = subprocess.run([*command, "stats"], env=env, capture_output=True, text=True).stdout
    assert "fetches    1" in stats and "sources    1 objects without a digest, 15 hits" in stats
    listing = subprocess.run([*command, "ls"], env=env, capture_output=True, text=True).stdout
    assert f"source {url} (15 hits)" in listing


def test_a_task_on_the_same_node_reads_such_an_input_without_a_get_until_it_changes(
    tmp_path: Path, store: ObjectStore, prefix: S3Url, raw_client: Any
) -> None:
    url = prefix.child("in/table.csv")
    raw_client.put_object(Bucket=url.bucket, Key=url.key, Body=b"a,b\n1,2\n")
    node = Node(
        cache=NodeCache(tmp_path / "cache", quota_bytes=64 * MiB),
        store=store,
        sandbox_dir=tmp_path / "sandboxes",
    )

    def run(task_id: str) -> int:
        """Run a task that copies the input; return the GETs it made."""
        spec = parse_spec(
            {
                "id": task_id,
                "command": "cat table.csv > out.txt",
                "shell": True,
                "inputs": [{"source": str(url), "path": "table.csv"}],
                "outputs": [{"path": "out.txt", "to": str(prefix.child(f"out/{task_id}"))}],
            }
        )
        calls = count_requests(store)
        wrap_task(spec, node)
        return calls["GetObject"]

    assert run("first") == 2  # its earlier result (none), and the input
    assert run("second") == 1  # its earlier result only: the input came from the cache
    assert store.get_bytes(prefix.child("out/second")) == b"a,b\n1,2\n"
    # Same size, other bytes: a new ETag, so a new source; the task gets the new bytes.
    raw_client.put_object(Bucket=url.bucket, Key=url.key, Body=b"a,b\n3,4\n")
    assert run("third") == 2
    assert store.get_bytes(prefix.child("out/third")) == b"a,b\n3,4\n"


def test_workers_schedule_and_cache_an_input_that_no_one_gave_a_digest(
    tmp_path: Path, prefix: S3Url, raw_client: Any, s3_server: LocalS3Server, store: ObjectStore
) -> None:
    url = prefix.child("ref/genome.fa")
    data = os.urandom(256 * 1024)
    raw_client.put_object(Bucket=url.bucket, Key=url.key, Body=data)

    def task(task_id: str) -> TaskSpec:
        return parse_spec(
            {
                "id": task_id,
                "command": "cksum < ref > out.txt",
                "shell": True,
                "inputs": [{"source": str(url), "path": "ref"}],
                "outputs": [{"path": "out.txt", "to": str(prefix.child(f"out/{task_id}"))}],
            }
        )

    env = {**s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    args = ["--policy", "max-cache-hit", "--starvation-s", "600"]
    with LocalCluster(tmp_path / "cluster", env, dispatcher_args=args) as cluster:
        cluster.add_worker("holder")
        cluster.wait_for_workers(["holder"])
        cluster.client.submit([task("first")], workflow="one")
        wait_for_workflow(cluster.client, "one", poll_s=0.2)
        cluster.add_worker("other")
        cluster.wait_for_workers(["holder", "other"])
        cluster.client.submit([task(f"next-{n}") for n in range(4)], workflow="more")
        status = wait_for_workflow(cluster.client, "more", poll_s=0.2)
        placed = {task_of(a.task): a.worker for a in cluster.client.assignments()}
    assert {placed[f"next-{n}"] for n in range(4)} == {"holder"}  # where the bytes are
    assert status.bytes_from_s3 == 0 and status.bytes_from_cache == 4 * len(data)
    expected = subprocess.run(["cksum"], input=data, capture_output=True, check=True).stdout
    assert store.get_bytes(prefix.child("out/next-3")) == expected


KILLED_BETWEEN_ENTRY_AND_RECORD = """
import os, sys
from pathlib import Path
from fsd.cache import NodeCache
from fsd.sources import Source, SourceIndex
from stager.locations import S3Url

def die(self, source, digest):  # the entry is published; its record is not written yet
    os.kill(os.getpid(), 9)

SourceIndex.record = die
cache = NodeCache(Path(sys.argv[1]), quota_bytes=1 << 30)
source = Source("e", S3Url("bkt", "k"), '"etag"', 6)
cache.ensure(None, 6, lambda writer: writer.write(b"bytes!"), source=source)
"""


def test_a_kill_between_an_entry_and_its_source_record_costs_one_more_fetch(
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_ENTRY_AND_RECORD, str(cache_dir)], cwd=REPO
    )
    assert killed.returncode == -9
    cache = NodeCache(cache_dir, quota_bytes=1 << 30)  # recovery, as the next process opens it
    assert cache.stats().entries == 1 and cache.stats().source_records == 0
    fills: list[int] = []

    def fill(writer: Any) -> None:
        fills.append(1)
        writer.write(b"bytes!")

    source = Source("e", S3Url("bkt", "k"), '"etag"', 6)
    entry = cache.ensure(None, 6, fill, source=source)
    assert entry.read_bytes() == b"bytes!" and fills == [1]  # fetched once more, then known
    assert cache.ensure(None, 6, fill, source=source) == entry and fills == [1]
    assert cache.stats().entries == 1 and cache.verify() == []
