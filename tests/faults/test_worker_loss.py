"""A worker killed (kill -9) while its finished tasks wait to be recorded and reported.

Real dispatcher and workers, the real S3 server. The victim reaches S3 through
a proxy that never answers the write of a result segment: its tasks' outputs
are in S3, their results in no segment, and nothing is reported done. Killed
then, its tasks must run again on another worker (DESIGN.md invariant 2: no
task is done whose result is not durable).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from dataclasses import replace
from pathlib import Path

from bench.faultproxy import NO_FAULTS, FaultProxy
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.integration.test_dispatch import submit, task, wait_for, wait_until_ended
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState
from worker_hooks.wrap.memo import recorded_results


def test_a_worker_killed_with_completions_unrecorded_has_those_tasks_run_again(
    cluster: LocalCluster,
    s3_server: LocalS3Server,
    store: ObjectStore,
    prefix: S3Url,
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"
    quiet = replace(NO_FAULTS, hold_paths=("/segments/",))
    proxy = FaultProxy(s3_server.endpoint_url, quiet)
    try:
        victim = cluster.add_worker("victim", env={"AWS_ENDPOINT_URL": proxy.start()})
        ids = [f"t{n}" for n in range(3)]
        bodies = [task(i, f"echo {i} > out.txt; echo {i} >> {ledger}", prefix) for i in ids]
        submit(cluster.client, bodies, workflow="wf")
        wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) == 3)
        wait_for(lambda: proxy.injected["hold"] >= 1)  # a segment write hangs
        outputs = [prefix.child(f"out/{i}.txt") for i in ids]
        wait_for(lambda: all(store.head(url) is not None for url in outputs))
        for i, url in zip(ids, outputs, strict=True):  # outputs in S3, yet nothing reported done
            assert store.get_bytes(url) == f"{i}\n".encode()
        assert cluster.client.status("wf").count(TaskState.DONE) == 0
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        cluster.add_worker("rescuer")
        assert wait_until_ended(cluster.client, "wf")["done"] == 3
    finally:
        proxy.stop()
    assert Counter(ledger.read_text().split()) == {i: 2 for i in ids}  # each ran again
    recorded = list(recorded_results(store, prefix.child("results/")))
    assert sorted(r.task_id for r in recorded) == ids  # the rescuer's segments only
    for i in ids:
        info = cluster.client.task(f"wf/{i}")
        assert info.result is not None and not info.memoized
        assert [a.worker for a in info.attempts][-1] == "rescuer"


def test_a_refused_segment_write_fails_its_tasks_for_another_attempt(
    cluster: LocalCluster,
    s3_server: LocalS3Server,
    store: ObjectStore,
    prefix: S3Url,
    tmp_path: Path,
) -> None:
    """S3 refuses the first segment write (403): its task is reported failed, not done,
    and runs again; the second attempt's segment lands."""
    ledger = tmp_path / "ledger"
    proxy = FaultProxy(s3_server.endpoint_url, replace(NO_FAULTS, refuse_paths=("/segments/",)))
    try:
        cluster.add_worker("w", env={"AWS_ENDPOINT_URL": proxy.start()})
        body = task("t", f"echo t > out.txt; echo t >> {ledger}", prefix)
        submit(cluster.client, [body], workflow="wf")
        assert wait_until_ended(cluster.client, "wf")["done"] == 1
    finally:
        proxy.stop()
    assert proxy.injected["refuse"] == 1
    assert ledger.read_text().split() == ["t", "t"]
    first, second = cluster.client.task("wf/t").attempts
    assert first.outcome == "failed" and "segment" in (first.error or "")
    assert second.outcome == "done"
    assert [r.task_id for r in recorded_results(store, prefix.child("results/"))] == ["t"]
