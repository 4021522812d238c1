"""The dispatcher is killed (kill -9) mid-workflow and restarted on its database.

Real dispatcher and workers, the real S3 server. Every command appends its
task id to a ledger outside the sandboxes as its last step, so a task run
twice to completion shows up there twice, whatever the dispatcher believes.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from stager.locations import S3Url
from stager.objectstore import ObjectStore
from tests.integration.test_dispatch import submit, task, wait_for, wait_until_ended
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState


def test_a_dispatcher_killed_mid_workflow_loses_no_task_and_runs_none_twice(
    cluster: LocalCluster, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    ledger = tmp_path / "ran.log"
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    count = 16
    tasks = [
        task(f"t{n}", f"sleep 0.4; echo {n} > out.txt; echo t{n} >> '{ledger}'", prefix)
        for n in range(count)
    ]
    submit(cluster.client, tasks, workflow="wf")
    wait_for(lambda: cluster.client.status("wf").counts["done"] >= 3)
    assert cluster.dispatcher is not None
    os.kill(cluster.dispatcher.pid, signal.SIGKILL)  # commands are running on both workers
    cluster.dispatcher.wait()
    # Down for longer than a lease: completions made meanwhile wait in their workers,
    # and neither their leases nor the workers are taken as lost for the outage.
    time.sleep(8)
    cluster.start_dispatcher()

    assert wait_until_ended(cluster.client, "wf") == {
        **{state.value: 0 for state in TaskState},
        "done": count,
    }
    runs = Counter(ledger.read_text().split())
    assert runs == Counter({f"t{n}": 1 for n in range(count)})
    assert not any(worker.lost for worker in cluster.client.status().workers)
    for n in range(count):
        assert store.get_bytes(prefix.child(f"out/t{n}.txt")) == f"{n}\n".encode()
        assert len(cluster.client.assignments(f"t{n}")) == 1
