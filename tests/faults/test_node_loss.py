"""A node dies with the only copy of an intermediate: kill -9, its scratch wiped.

Real dispatcher and workers (with their file services), the real S3 server.
The dispatcher finds the node lost once it is silent past its lease, runs
the producer again elsewhere, and the dependant completes with the bytes
made the second time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.integration.test_dispatch import submit, wait_for, wait_until_ended
from tests.integration.test_peers import SERVE, spec, state_of
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState


@pytest.fixture
def cluster(s3_server: LocalS3Server, tmp_path: Path) -> Iterator[LocalCluster]:
    env = {**s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    with LocalCluster(tmp_path / "cluster", env, policy=Policy.FIFO, lease_s=3) as started:
        yield started


def test_a_lost_local_intermediate_is_recomputed_and_its_dependant_completes(
    cluster: LocalCluster, store: ObjectStore, prefix: S3Url
) -> None:
    cluster.add_worker("a", *SERVE)
    cluster.wait_for_workers(["a"])
    produce = spec("p", "head -c 2000000 /dev/urandom > out.bin", prefix, "local")
    submit(cluster.client, [produce], "wf")
    wait_for(state_of(cluster, "p"))
    first = cluster.client.task("p").result
    assert first is not None

    os.kill(cluster.workers["a"].pid, signal.SIGKILL)  # the node dies, and its disk with it
    cluster.workers["a"].wait()
    shutil.rmtree(cluster.work_dir / "a")

    cluster.add_worker("b", *SERVE)
    consume = spec(
        "c", "cp in.bin out.bin", prefix, inputs=[{"source": "task://p/out.bin", "path": "in.bin"}]
    )
    submit(cluster.client, [consume], "wf")
    assert wait_until_ended(cluster.client, "wf", timeout_s=120) == {
        **{state.value: 0 for state in TaskState},
        "done": 2,
    }, cluster.log_of("b")[-2000:]

    again = cluster.client.task("p").result
    assert again is not None and again.outputs[0].digest != first.outputs[0].digest
    copied = store.get_bytes(prefix.child("out/c.bin"))
    assert digest_bytes(copied) == again.outputs[0].digest  # the bytes made the second time
    assert [a.worker for a in cluster.client.assignments("p")] == ["a", "b"]
    lost = {w.id: w.lost for w in cluster.client.status().workers}
    assert lost == {"a": True, "b": False}


def test_recover_dry_run_reports_and_changes_nothing(cluster: LocalCluster, prefix: S3Url) -> None:
    cluster.add_worker("a", *SERVE)
    cluster.wait_for_workers(["a"])
    submit(cluster.client, [spec("p", "echo x > out.bin", prefix, "local")], "wf")
    wait_for(state_of(cluster, "p"))
    wait_for(lambda: cluster.client.status().workers[0].cached_digests > 0)
    report = cluster.client.recover("a", dry_run=True)
    assert report.dry_run and report.recomputed == ("wf/p",)  # a final output, only on a
    assert cluster.client.task("p").state is TaskState.DONE
    assert not cluster.client.status().workers[0].lost
    # The same from the command line, and a node that never was: one line, exit 3.
    env = {**cluster.env, "STAGER_DISPATCHER_URL": cluster.url}
    flags = ["--token-file", str(cluster.token_file)]
    shown = subprocess.run(
        [sys.executable, "-m", "stager", "recover", "--node", "a", "--dry-run", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0 and "tasks would be recomputed: wf/p" in shown.stdout, shown.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "stager", "recover", "--node", "nobody", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1
    assert not cluster.client.status().workers[0].lost


def test_a_worker_restarted_on_its_intact_disk_serves_what_it_held(
    s3_server: LocalS3Server, tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    env = {**s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    with LocalCluster(tmp_path / "c", env, policy=Policy.FIFO, lease_s=30) as cluster:
        cluster.add_worker("a", *SERVE)
        cluster.wait_for_workers(["a"])
        produce = spec("p", "head -c 1000000 /dev/urandom > out.bin", prefix, "local")
        submit(cluster.client, [produce], "wf")
        wait_for(state_of(cluster, "p"))
        os.kill(cluster.workers["a"].pid, signal.SIGKILL)  # the process dies, the disk stays
        cluster.workers["a"].wait()
        cluster.add_worker("a", *SERVE)  # same id, same cache, a new port for its service
        cluster.add_worker("b", *SERVE)
        consume = spec(
            "c",
            "cp in.bin out.bin",
            prefix,
            inputs=[{"source": "task://p/out.bin", "path": "in.bin"}],
        )
        submit(cluster.client, [consume], "wf")
        assert wait_until_ended(cluster.client, "wf")["done"] == 2
        produced = cluster.client.task("p").result
        assert produced is not None
        copied = store.get_bytes(prefix.child("out/c.bin"))
        assert digest_bytes(copied) == produced.outputs[0].digest
        assert [a.worker for a in cluster.client.assignments("p")] == ["a"]  # ran once


def _partial_files(root: Path) -> list[Path]:
    return (
        [p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 0]
        if root.exists()
        else []
    )


def test_kill_9_mid_download_and_mid_upload_loses_nothing_and_leaves_no_orphan(
    cluster: LocalCluster, store: ObjectStore, prefix: S3Url, raw_client: Any
) -> None:
    size = 200 * 1024 * 1024
    source = prefix.child("in/big.bin")
    raw_client.put_object(Bucket=source.bucket, Key=source.key, Body=b"\x01" * size)
    cluster.add_worker("down", "--slots", "1", "--prefetch", "0")
    cluster.wait_for_workers(["down"])
    copy = spec(
        "copy", "cp big.bin out.bin", prefix, inputs=[{"source": str(source), "path": "big.bin"}]
    )
    submit(cluster.client, [copy], "wf")
    temp = cluster.work_dir / "down" / "cache" / "tmp"
    wait_for(lambda: bool(_partial_files(temp)), timeout_s=60)  # bytes arriving
    os.killpg(cluster.workers["down"].pid, signal.SIGKILL)
    cluster.workers["down"].wait()

    cluster.add_worker("up", "--slots", "1", "--prefetch", "0")
    output = prefix.child("out/copy.bin")

    def uploading() -> set[str]:
        listed = raw_client.list_multipart_uploads(Bucket=output.bucket, Prefix=output.key)
        return {item["UploadId"] for item in listed.get("Uploads", [])}

    wait_for(lambda: bool(uploading()), timeout_s=120)  # the output is going up in parts
    os.killpg(cluster.workers["up"].pid, signal.SIGKILL)
    cluster.workers["up"].wait()
    orphans = uploading()

    # The next agent on this node aborts what the killed one left open.
    cluster.add_worker("last", "--slots", "1", "--prefetch", "0")
    wait_for(lambda: not orphans & uploading(), timeout_s=60)
    assert wait_until_ended(cluster.client, "wf", timeout_s=180)["done"] == 1
    result = cluster.client.task("copy").result
    assert result is not None
    info = store.head(output)
    assert info is not None and info.digest == result.outputs[0].digest and info.size == size
    assert {a.worker for a in cluster.client.assignments("copy")} >= {"down", "up", "last"}
    assert not uploading()
    assert f"aborted {len(orphans)} uploads" in cluster.log_of("last")
