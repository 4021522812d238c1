"""The dispatcher is killed (kill -9) mid-workflow and restarted on its database.

Real dispatcher and workers, the real S3 server. Every command appends its
task id to a ledger outside the sandboxes as its last step, so a task run
twice to completion shows up there twice, whatever the dispatcher believes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from stager.errors import StagerError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from tests.integration.test_dispatch import submit, task, wait_for, wait_until_ended
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import Completion, TaskState
from worker_hooks.task.result import ResultManifest


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


def test_a_full_disk_under_the_task_database_refuses_changes_and_loses_none(
    small_disk: Path, tmp_path: Path
) -> None:
    """Requests whose changes cannot be committed are answered with the reason in one
    line, and change nothing; once there is room, the same requests are accepted,
    and what was answered survives a kill -9."""
    with LocalCluster(small_disk / "cluster", {"STAGER_STATE_DIR": str(tmp_path)}) as cluster:
        client = cluster.client
        bodies = [{"id": f"t{n}", "command": ["true"], "results": "s3://bkt/r/"} for n in range(3)]
        submit(client, bodies, workflow="wf")
        leases = client.lease("w", 3, wait_s=5).leases
        big = "x" * 600_000  # more than the WAL holds already: the commit must grow it
        completions = [
            Completion(
                lease.task_id,
                lease.attempt,
                ResultManifest(
                    task_id=lease.task_id,
                    task_key=f"k{n}",
                    command=("echo", big),
                    exit_code=0,
                    host="h",
                    started_at="s",
                ),
            )
            for n, lease in enumerate(leases)
        ]
        filler = small_disk / "filler"
        with filler.open("wb") as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        with pytest.raises(StagerError, match="disk is full") as refused:
            client.complete_many("w", completions)
        assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
        assert [client.task(f"t{n}").state for n in range(3)] == [TaskState.LEASED] * 3

        filler.unlink()
        assert client.complete_many("w", completions).stale == ()
        assert cluster.dispatcher is not None
        os.kill(cluster.dispatcher.pid, signal.SIGKILL)
        cluster.dispatcher.wait()
        cluster.start_dispatcher()
        assert [client.task(f"t{n}").state for n in range(3)] == [TaskState.DONE] * 3
        assert "Traceback" not in cluster.log_of("dispatcher")
