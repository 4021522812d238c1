"""Outputs kept on nodes: `local` intermediates fetched from a peer, `mirror` surviving kill -9.

Real dispatcher and worker processes, each worker with its node file service
(`stager worker --serve`), against the real S3 server.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fsd.outbox import Outbox, outbox_path
from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.integration.test_dispatch import submit, wait_for, wait_until_ended
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState
from worker_hooks.task.result import Persist

SERVE = ("--serve", "127.0.0.1:0", "--slots", "1", "--prefetch", "0", "--heartbeat-s", "1")


@pytest.fixture
def cluster(s3_server: LocalS3Server, tmp_path: Path) -> Iterator[LocalCluster]:
    env = {**s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    with LocalCluster(tmp_path / "cluster", env, policy=Policy.FIFO, lease_s=3) as started:
        yield started


def spec(task_id: str, command: str, prefix: S3Url, persist: str = "s3", **extra: Any) -> Any:
    return {
        "id": task_id,
        "command": command,
        "shell": True,
        "outputs": [
            {"path": "out.bin", "to": str(prefix.child(f"out/{task_id}.bin")), "persist": persist}
        ],
        "results": str(prefix.child("results/")),
        **extra,
    }


def state_of(cluster: LocalCluster, task_id: str) -> Callable[[], bool]:
    return lambda: cluster.client.task(task_id).state is TaskState.DONE


def local_output_on_a_busy_node(cluster: LocalCluster, prefix: S3Url) -> None:
    """Node a makes p's 3 MB output, kept `local`, then stays busy: whatever reads that
    output runs on another node, which must fetch it from a."""
    cluster.add_worker("a", *SERVE)
    cluster.wait_for_workers(["a"])
    submit(
        cluster.client, [spec("p", "head -c 3000000 /dev/urandom > out.bin", prefix, "local")], "wf"
    )
    wait_for(state_of(cluster, "p"))
    submit(cluster.client, [spec("hold", "sleep 8; echo > out.bin", prefix)], "wf")
    wait_for(lambda: cluster.client.task("hold").state is TaskState.LEASED)


def test_a_local_intermediate_reaches_a_dependant_on_another_node_without_s3(
    cluster: LocalCluster, store: ObjectStore, prefix: S3Url
) -> None:
    local_output_on_a_busy_node(cluster, prefix)
    cluster.add_worker("b", *SERVE)
    consumer = spec(
        "c", "cp in.bin out.bin", prefix, inputs=[{"source": "task://p/out.bin", "path": "in.bin"}]
    )
    submit(cluster.client, [consumer], "wf")
    assert wait_until_ended(cluster.client, "wf")["done"] == 3

    produced = cluster.client.task("p").result
    assert produced is not None and produced.outputs[0].kept is Persist.LOCAL
    assert store.head(produced.outputs[0].url) is None  # S3 never saw the intermediate
    copied = store.get_bytes(prefix.child("out/c.bin"))
    assert digest_bytes(copied) == produced.outputs[0].digest
    assert cluster.client.task("c").worker == "b"
    status = cluster.client.status("wf")
    assert status.bytes_from_peers == 3_000_000
    assert [(n.workflow, n.outputs) for n in status.node_only] == [("wf", 1)]


def test_an_input_a_prefetch_read_from_a_peer_counts_as_read_from_the_peer(
    cluster: LocalCluster, prefix: S3Url
) -> None:
    local_output_on_a_busy_node(cluster, prefix)
    cluster.add_worker("b", "--serve", "127.0.0.1:0", "--slots", "1", "--prefetch", "2")
    submit(cluster.client, [spec("busy", "sleep 3; echo > out.bin", prefix)], "wf")
    wait_for(lambda: cluster.client.task("busy").state is TaskState.LEASED)
    # b holds c while busy has its only slot: c's input is prefetched from a meanwhile,
    # and c's own stage-in finds it in b's cache.
    consumer = spec(
        "c", "cp in.bin out.bin", prefix, inputs=[{"source": "task://p/out.bin", "path": "in.bin"}]
    )
    submit(cluster.client, [consumer], "wf")
    assert wait_until_ended(cluster.client, "wf")["done"] == 4
    assert cluster.client.task("c").worker == "b"
    status = cluster.client.status("wf")
    assert status.bytes_from_peers == 3_000_000 and status.bytes_from_s3 == 0


def test_a_mirrored_output_reaches_s3_after_kill_9_of_its_producer(
    cluster: LocalCluster, store: ObjectStore, prefix: S3Url
) -> None:
    for name in ("a", "b"):
        cluster.add_worker(name, *SERVE)
    cluster.wait_for_workers(["a", "b"])
    submit(
        cluster.client,
        [spec("m", "head -c 4000000 /dev/urandom > out.bin", prefix, "mirror")],
        "wf",
    )
    wait_for(state_of(cluster, "m"))
    producer = cluster.client.task("m").worker
    assert producer in ("a", "b")
    os.kill(cluster.workers[producer].pid, signal.SIGKILL)  # before its own write behind
    cluster.workers[producer].wait()

    result = cluster.client.task("m").result
    assert result is not None
    record = result.outputs[0]
    assert record.kept is Persist.MIRROR
    wait_for(lambda: store.head(record.url) is not None, timeout_s=60)
    info = store.head(record.url)
    assert info is not None and info.digest == record.digest and info.size == record.size
    node_dir = cluster.work_dir / producer / "cache"
    producer_outbox = Outbox(outbox_path(node_dir))
    assert producer_outbox.counts().written == 0  # so the mirror wrote it
    producer_outbox.close()
    # The mirror tells the dispatcher: nothing of the workflow is only on nodes any more.
    wait_for(lambda: cluster.client.status("wf").node_only == (), timeout_s=30)
    assert cluster.client.status("wf").bytes_written_behind == 4_000_000
