"""The dispatcher and workers as real processes against the real S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from bench.faultproxy import NO_FAULTS, FaultProxy
from fsd.cache import NodeCache
from stager.digest import digest_bytes
from stager.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    PreconditionFailedError,
    UnreachableError,
)
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server, free_ports
from tests.helpers import make_certificate
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import PROTOCOL_VERSION, VERSION_HEADER, Completion, TaskState
from worker_hooks.task.result import ResultManifest
from worker_hooks.task.spec import task_of
from worker_hooks.task.workflowfile import STREAM_FROM_BYTES
from worker_hooks.wrap.memo import recorded_results

ClusterFactory = Callable[..., LocalCluster]


@pytest.fixture
def make_cluster(s3_server: LocalS3Server, tmp_path: Path) -> Iterator[ClusterFactory]:
    started: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        env = {**s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
        cluster = LocalCluster(tmp_path / f"cluster{len(started)}", env, **kwargs)
        started.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


def task(task_id: str, command: str, prefix: S3Url, **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "command": command,
        "shell": True,
        "outputs": [{"path": "out.txt", "to": str(prefix.child(f"out/{task_id}.txt"))}],
        "results": str(prefix.child("results/")),
        **extra,
    }


def submit(client: DispatcherClient, bodies: list[dict[str, Any]], workflow: str) -> list[str]:
    return list(client.submit([parse_spec(body) for body in bodies], workflow=workflow).submitted)


Stager = Callable[..., subprocess.CompletedProcess[str]]


def cli_of(cluster: LocalCluster, run_cli: Any) -> Stager:
    """``stager ARGS...`` as a real process, pointed at ``cluster``'s dispatcher."""
    env = {
        "STAGER_DISPATCHER_URL": cluster.url,
        "STAGER_DISPATCHER_TOKEN_FILE": str(cluster.token_file),
    }

    def stager(*args: str) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = run_cli(*args, env=env)
        return result

    return stager


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{condition} still false after {timeout_s} s"
        time.sleep(0.05)


def wait_until_ended(
    client: DispatcherClient, workflow: str, timeout_s: float = 120
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status(workflow)
        counts = status.counts
        if sum(status.count(s) for s in TaskState if s.final) == sum(counts.values()):
            return counts
        assert time.monotonic() < deadline, f"workflow {workflow} did not end: {counts}"
        time.sleep(0.2)


def test_a_workflow_completes_across_worker_processes(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url
) -> None:
    cluster = make_cluster()
    for name in ("w1", "w2"):
        cluster.add_worker(name)
    maps = [task(f"m{n}", f"echo {n} > out.txt", prefix) for n in range(6)]
    reduce = task(
        "sum",
        "cat in/* | sort > out.txt",
        prefix,
        inputs=[{"source": f"task://m{n}/out.txt", "path": f"in/{n}"} for n in range(6)],
    )
    submit(cluster.client, [*maps, reduce], workflow="wf")
    assert wait_until_ended(cluster.client, "wf")["done"] == 7
    assert store.get_bytes(prefix.child("out/sum.txt")) == b"0\n1\n2\n3\n4\n5\n"
    result = cluster.client.task("sum").result
    assert result is not None
    assert result.outputs[0].digest == digest_bytes(b"0\n1\n2\n3\n4\n5\n")
    assert {a.worker for a in cluster.client.assignments()} <= {"w1", "w2"}


def test_kill_9_of_a_worker_mid_task_releases_its_task_after_expiry(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    cluster = make_cluster(lease_s=2)
    victim = cluster.add_worker("victim")
    started = tmp_path / "started"
    slow = task("slow", f"touch {started}; sleep 2; echo finished > out.txt", prefix)
    submit(cluster.client, [slow], workflow="wf")
    wait_for(started.exists)
    os.kill(victim.pid, signal.SIGKILL)  # the worker only; its command is left to finish
    victim.wait()
    cluster.add_worker("rescuer")
    assert wait_until_ended(cluster.client, "wf")["done"] == 1
    assignments = cluster.client.assignments("slow")
    # The victim's attempt was lost; every later one (one, unless a loaded
    # machine delayed a heartbeat past the short lease) went to the rescuer.
    assert (assignments[0].attempt, assignments[0].worker) == (1, "victim")
    assert len(assignments) >= 2 and {a.worker for a in assignments[1:]} == {"rescuer"}
    assert store.get_bytes(prefix.child("out/slow.txt")) == b"finished\n"


def test_a_stale_completion_is_refused(make_cluster: ClusterFactory, prefix: S3Url) -> None:
    cluster = make_cluster(lease_s=1)
    client = cluster.client
    submit(client, [task("t", "true", prefix)], workflow="wf")
    (first,) = client.lease("late", 1, wait_s=5).leases
    time.sleep(2.5)  # the lease expires; the dispatcher re-queues the task
    (second,) = client.lease("prompt", 1, wait_s=5).leases
    assert second.attempt == first.attempt + 1
    manifest = ResultManifest.from_bytes(
        b'{"format": "stager-result/1", "task_id": "t", "task_key": "k", "command": ["true"],'
        b' "exit_code": 0, "host": "h", "started_at": "s", "timings_s": {}, "inputs": [],'
        b' "outputs": [], "logs": []}'
    )
    with pytest.raises(PreconditionFailedError, match="not the current lease"):
        client.complete(first.task_id, first.attempt, "late", manifest, [])
    client.complete(first.task_id, second.attempt, "prompt", manifest, [])
    with pytest.raises(PreconditionFailedError):
        client.complete(first.task_id, first.attempt, "late", manifest, [])
    assert client.task("t").state is TaskState.DONE


def test_completions_in_one_request_are_fenced_each_on_its_own(
    make_cluster: ClusterFactory, prefix: S3Url
) -> None:
    cluster = make_cluster(lease_s=1)
    client = cluster.client
    submit(client, [task(t, "true", prefix) for t in ("a", "b")], workflow="wf")
    leases = {lease.task_id: lease for lease in client.lease("w", 2, wait_s=5).leases}
    manifest = ResultManifest(
        task_id="x", task_key="k", command=("true",), exit_code=0, host="h", started_at="s"
    )
    batch = [Completion(t, lease.attempt, manifest) for t, lease in leases.items()]
    late = Completion("wf/a", leases["wf/a"].attempt - 1, manifest)  # an older attempt
    assert client.complete_many("w", [late, *batch[1:]]).stale == ("wf/a",)
    assert client.task("b").state is TaskState.DONE
    assert client.task("a").state is TaskState.LEASED
    assert client.complete_many("w", batch[:1]).stale == ()
    assert client.task("a").state is TaskState.DONE


def test_completions_lease_the_tasks_for_the_slots_they_free(
    make_cluster: ClusterFactory, prefix: S3Url
) -> None:
    cluster = make_cluster()
    client = cluster.client
    submit(client, [task(t, "true", prefix) for t in ("a", "b", "c")], workflow="wf")
    (first,) = client.lease("w", 1, wait_s=5).leases
    manifest = ResultManifest(
        task_id=first.task_id,
        task_key="k",
        command=("true",),
        exit_code=0,
        host="h",
        started_at="s",
    )
    done = Completion(first.task_id, first.attempt, manifest)
    reply = client.complete_many("w", [done], want=5)  # more than are queued
    assert reply.stale == () and client.task(first.task_id).state is TaskState.DONE
    assert sorted(lease.task_id for lease in reply.leases) == ["wf/b", "wf/c"]
    for lease in reply.leases:
        info = client.task(lease.task_id)
        assert info.state is TaskState.LEASED and info.attempts[-1].worker == "w"
        assert lease.attempt == 1 and lease.spec.command == ("true",)
    assert client.complete_many("w", [], want=1).leases == ()  # nothing left to lease


def test_a_busy_worker_leases_through_its_completions(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url
) -> None:
    """A worker reporting a task done gets the next one in the same round trip: its
    lease requests are a few, not one per task."""
    cluster = make_cluster()
    ids = [f"t{n}" for n in range(12)]
    submit(cluster.client, [task(i, f"sleep 0.2; echo {i} > out.txt", prefix) for i in ids], "wf")
    proxy = FaultProxy(cluster.url, NO_FAULTS)  # records the worker's requests
    try:
        cluster.add_worker("w", dispatcher=proxy.start())
        assert wait_until_ended(cluster.client, "wf")["done"] == len(ids)
        paths = Counter(path for _, path, _ in proxy.seen)
    finally:
        proxy.stop()
    for i in ids:
        assert store.get_bytes(prefix.child(f"out/{i}.txt")) == f"{i}\n".encode()
    assert paths["/v1/completions"] >= 1
    assert paths["/v1/lease"] <= len(ids) // 3, paths


def test_a_slot_runs_the_next_task_while_the_last_ones_outputs_upload(
    make_cluster: ClusterFactory,
    s3_server: LocalS3Server,
    store: ObjectStore,
    prefix: S3Url,
    tmp_path: Path,
) -> None:
    """One slot: the second task's command runs while the first one's output is still
    on its way to S3 (held back 10 s); both are done once their outputs landed."""
    cluster = make_cluster(policy=Policy.FIFO)
    ran = tmp_path / "ran"
    bodies = [task(i, f"echo {i} > out.txt; echo {i} >> {ran}", prefix) for i in ("slow", "quick")]
    slowed = replace(NO_FAULTS, slow_paths=("/out/slow.txt",), slow_s=10.0)
    proxy = FaultProxy(s3_server.endpoint_url, slowed)
    try:
        cluster.add_worker("w", "--slots", "1", env={"AWS_ENDPOINT_URL": proxy.start()})
        submit(cluster.client, bodies, "wf")
        wait_for(lambda: ran.exists() and ran.read_text().split() == ["slow", "quick"])
        assert store.head(prefix.child("out/slow.txt")) is None  # on its way still
        assert cluster.client.task("wf/slow").state is TaskState.LEASED
        assert wait_until_ended(cluster.client, "wf")["done"] == 2
    finally:
        proxy.stop()
    for i in ("slow", "quick"):
        assert store.get_bytes(prefix.child(f"out/{i}.txt")) == f"{i}\n".encode()
        assert len(cluster.client.task(f"wf/{i}").attempts) == 1


def test_a_large_workflow_goes_in_parts_producers_first(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url
) -> None:
    cluster = make_cluster()
    client = cluster.client
    chain = [  # listed last to first: each reads the one listed after it
        task(f"c{n}", f"cat in.txt > out.txt; echo {n} >> out.txt", prefix)
        | ({"inputs": [{"source": f"task://c{n - 1}/out.txt", "path": "in.txt"}]} if n else {})
        for n in reversed(range(7))
    ]
    chain[-1]["command"] = "echo 0 > out.txt"
    parts: list[int] = []
    reply = client.submit([parse_spec(b) for b in chain], "wf", chunk_tasks=3, sent=parts.append)
    assert parts == [3, 3, 1] and sorted(reply.submitted) == [f"c{n}" for n in range(7)]
    cluster.add_worker("w")
    assert wait_until_ended(client, "wf")["done"] == 7
    assert store.get_bytes(prefix.child("out/c6.txt")) == b"".join(b"%d\n" % n for n in range(7))
    again = client.submit([parse_spec(b) for b in chain], "wf", chunk_tasks=3)  # unchanged
    assert again.submitted == () and again.again == ()
    assert again.kept == tuple(sorted(f"c{n}" for n in range(7)))

    # Every producer in the batch: a mistake is found before any part is sent.
    bad = [task(f"d{n}", "true", prefix) for n in range(5)]
    bad[4]["inputs"] = [{"source": "task://d0/missing.txt", "path": "x"}]
    with pytest.raises(ConfigError, match="does not declare"):
        client.submit([parse_spec(b) for b in bad], "wf2", chunk_tasks=2)
    with pytest.raises(NotFoundError):
        client.task("wf2/d0")

    # A producer submitted before (or not): the dispatcher checks each part, and the
    # error says what went through.
    later = [task(f"e{n}", "true", prefix) for n in range(5)]
    later[4]["inputs"] = [{"source": "task://nowhere/out.txt", "path": "x"}]
    with pytest.raises(ConfigError, match=r"unknown task nowhere.*the 4 tasks sent before"):
        client.submit([parse_spec(b) for b in later], "wf3", chunk_tasks=2)
    assert client.task("wf3/e3").state is not TaskState.FAILED


def test_dependants_of_a_failed_producer_fail_with_the_reason(
    make_cluster: ClusterFactory, prefix: S3Url
) -> None:
    cluster = make_cluster()
    cluster.add_worker("w1")
    producer = task("bad", "exit 7", prefix)
    consumer = task(
        "next", "cat x > out.txt", prefix, inputs=[{"source": "task://bad/out.txt", "path": "x"}]
    )
    submit(cluster.client, [producer, consumer], workflow="wf")
    counts = wait_until_ended(cluster.client, "wf")
    assert counts["failed"] == 2
    assert "exited with code 7" in (cluster.client.task("bad").error or "")
    assert "producer bad failed" in (cluster.client.task("next").error or "")


def test_requests_without_the_token_get_401(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    http = urllib3.PoolManager()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = http.request("GET", cluster.url + "/v1/status", headers=headers)
        assert response.status == 401
    # Header bytes that are not ASCII (nor UTF-8) are a wrong token too, not a crash.
    for odd in (b"Bearer \xff\xfe\x80", "Bearer \u00e9t\u00e9".encode()):
        response = http.request("GET", cluster.url + "/v1/status", headers={"Authorization": odd})
        assert response.status == 401, response.data
    with pytest.raises(AccessDeniedError, match="refused the token"):
        DispatcherClient(cluster.url, "wrong").status()
    assert "Traceback" not in cluster.log_of("dispatcher")
    assert "wrong" not in cluster.log_of("dispatcher")
    assert cluster.token_file.read_text().strip() not in cluster.log_of("dispatcher")


def test_sigterm_drain_hands_back_unstarted_tasks(
    make_cluster: ClusterFactory, prefix: S3Url, tmp_path: Path
) -> None:
    cluster = make_cluster()
    worker = cluster.add_worker("drainer", "--slots", "1", "--prefetch", "2", "--drain-s", "30")
    started = tmp_path / "started"
    tasks = [
        task(f"t{n}", f"touch {started}; sleep 2; echo {n} > out.txt", prefix) for n in range(3)
    ]
    submit(cluster.client, tasks, workflow="wf")
    deadline = time.monotonic() + 60
    while not (started.exists() and cluster.client.status("wf").counts["leased"] == 3):
        assert time.monotonic() < deadline, cluster.log_of("drainer")
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, cluster.log_of("drainer")
    counts = cluster.client.status("wf").counts
    assert counts == {**counts, "done": 1, "queued": 2, "leased": 0}
    assert "2 handed back" in cluster.log_of("drainer")


def test_an_input_read_by_a_prefetch_counts_once_as_read_from_s3(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url
) -> None:
    cluster = make_cluster()
    cluster.add_worker("w1", "--slots", "1", "--prefetch", "2")
    size = 3 * 1024 * 1024
    url = prefix.child("ref")
    ref = {"source": str(url), "path": "ref", "digest": str(store.put_bytes(url, os.urandom(size)))}
    # While "busy" holds the only slot, the worker prefetches the others' input.
    tasks = [
        task("busy", "sleep 2; echo > out.txt", prefix),
        *(task(f"reader{n}", "cat ref > out.txt", prefix, inputs=[ref]) for n in range(2)),
    ]
    submit(cluster.client, tasks, workflow="wf")
    assert wait_until_ended(cluster.client, "wf")["done"] == 3, cluster.log_of("w1")
    status = cluster.client.status("wf")
    assert (status.bytes_from_s3, status.bytes_from_cache) == (size, size)


def test_shared_mode_on_a_network_mount_reads_each_input_once(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url, network_mount: Path
) -> None:
    cluster = make_cluster()
    shared = network_mount / "stager-cache"
    for name in ("w1", "w2"):
        cluster.add_worker(name, "--slots", "2", cache_dir=shared)
    cluster.wait_for_workers(["w1", "w2"])
    data = os.urandom(3 * 1024 * 1024)
    url = prefix.child("ref")
    ref = {"source": str(url), "path": "ref", "digest": str(store.put_bytes(url, data))}
    tasks = [task(f"r{n}", "cksum < ref > out.txt", prefix, inputs=[ref]) for n in range(8)]
    submit(cluster.client, tasks, workflow="wf")
    assert wait_until_ended(cluster.client, "wf")["done"] == 8, cluster.log_of("w1")
    assert cluster.client.status("wf").bytes_from_s3 == len(data)
    expected = subprocess.run(["cksum"], input=data, capture_output=True, check=True).stdout
    for n in range(8):
        assert store.get_bytes(prefix.child(f"out/r{n}.txt")) == expected
    assert NodeCache(shared, quota_bytes=1 << 30).verify() == []


def test_data_aware_policy_sends_tasks_to_the_worker_holding_their_inputs(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url
) -> None:
    cluster = make_cluster(policy=Policy.MAX_CACHE_HIT, dispatcher_args=["--starvation-s", "600"])
    refs = {}
    for name in ("a", "b"):
        url = prefix.child(f"ref-{name}")
        refs[name] = (url, store.put_bytes(url, os.urandom(4096)))
    # Warm each node's cache with its own reference, as earlier tasks would have.
    for name in ("a", "b"):
        cache_dir = cluster.work_dir / f"node-{name}" / "cache"
        warmed = subprocess.run(
            [
                sys.executable,
                "-m",
                "stager",
                "cache",
                "--cache-dir",
                str(cache_dir),
                "fetch",
                str(refs[name][0]),
            ],
            env=cluster.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert warmed.returncode == 0, warmed.stderr
    for name in ("a", "b"):
        cluster.add_worker(f"node-{name}")
    cluster.wait_for_workers(["node-a", "node-b"])
    tasks = [
        task(
            f"{name}{n}",
            "cat ref > out.txt",
            prefix,
            inputs=[
                {
                    "source": str(refs[name][0]),
                    "path": "ref",
                    "digest": str(refs[name][1]),
                    "size": 4096,
                }
            ],
        )
        for n in range(6)
        for name in ("a", "b")
    ]
    submit(cluster.client, tasks, workflow="wf")
    assert wait_until_ended(cluster.client, "wf")["done"] == 12
    for a in cluster.client.assignments():
        assert a.worker == f"node-{task_of(a.task)[0]}", a
    assert cluster.client.status("wf").cache_hit_rate == 1.0


def test_tls_when_given_a_certificate(make_cluster: ClusterFactory, tmp_path: Path) -> None:
    files = make_certificate(tmp_path / "tls")
    cert, key = files.cert_file, files.key_file
    cluster = make_cluster(
        dispatcher_args=["--tls-cert", str(cert), "--tls-key", str(key)], ca_file=str(cert)
    )
    assert cluster.url.startswith("https://")
    assert cluster.client.status().counts["queued"] == 0
    with pytest.raises(UnreachableError):  # an untrusting client refuses the unknown cert
        DispatcherClient(cluster.url, "x").status()


def test_submit_wait_status_and_cancel_from_the_command_line(
    make_cluster: ClusterFactory, prefix: S3Url, tmp_path: Path, run_cli: Any
) -> None:
    cluster = make_cluster()
    cluster.add_worker("w1")
    stager = cli_of(cluster, run_cli)

    one = tmp_path / "one.json"
    one.write_text(json.dumps(task("single", "echo hi > out.txt", prefix)))
    done = stager("submit", str(one), "--wait")
    assert done.returncode == 0, done.stderr
    # The same stem is the same workflow: waiting covers the earlier task as well.
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "one.json").write_text(
        json.dumps(task("single-2", "sleep 1; echo hi > out.txt", prefix))
    )
    again = stager("submit", str(tmp_path / "again" / "one.json"), "--wait")
    assert again.returncode == 0, again.stderr
    assert cluster.client.status("one").counts["done"] == 2
    batch = tmp_path / "batch.yaml"
    batch.write_text(
        yaml.safe_dump([task("good", "echo ok > out.txt", prefix), task("bad", "exit 3", prefix)])
    )
    failed = stager("submit", str(batch), "--wait")
    assert failed.returncode == 10 and "1 failed" in failed.stderr
    status = stager("status", "--workflow", "batch")
    assert status.returncode == 0, status.stderr
    assert "done 1" in status.stdout and "failed 1" in status.stdout and "w1" in status.stdout
    parked = tmp_path / "parked.json"
    parked.write_text(
        json.dumps(
            task(
                "parked", "true", prefix, inputs=[{"source": "task://blocker/out.txt", "path": "x"}]
            )
        )
    )
    blocker = tmp_path / "blocker.json"
    blocker.write_text(json.dumps([task("blocker", "sleep 30", prefix)]))
    assert stager("submit", str(blocker)).returncode == 0
    assert stager("submit", str(parked)).returncode == 2  # blocker is not in its workflow
    assert stager("submit", str(parked), "--workflow", "blocker").returncode == 0
    cancelled = stager("cancel", "blocker")
    assert cancelled.returncode == 0 and "blocker: cancelled" in cancelled.stdout
    assert cluster.client.task("parked").state is TaskState.FAILED
    assert "cancelled" in (cluster.client.task("parked").error or "")


def test_a_large_workflow_file_is_read_in_parts_and_refused_whole(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url, tmp_path: Path, run_cli: Any
) -> None:
    cluster = make_cluster()
    cluster.add_worker("w1")
    stager = cli_of(cluster, run_cli)
    maps = [task(f"map-{n}", f"echo {n} > out.txt", prefix) for n in range(3)]
    gather = task(
        "gather",
        "cat parts/*/out.txt > out.txt",
        prefix,
        inputs=[{"source": "task://map-*/out.txt", "path": "parts/"}],
    )
    padding = " " * STREAM_FROM_BYTES  # big enough to be read a task at a time

    def written(name: str, tasks: list[dict[str, Any]]) -> Path:
        path = tmp_path / name
        path.write_text('{"name": "big", "tasks": ' + json.dumps(tasks) + padding + "}")
        return path

    # The consumer first: it waits in memory until its producers have been read.
    done = stager("submit", str(written("big.json", [gather, *maps])), "--wait")
    assert done.returncode == 0, done.stderr
    assert "4 new tasks" in done.stderr
    got = store.get_bytes(prefix.child("out/gather.txt"))
    assert sorted(got.decode().split()) == ["0", "1", "2"]
    # A mistake in the last task refuses the whole file: nothing is sent.
    late = task("late", "true", prefix, inputs=[{"source": "task://map-0/nope", "path": "x"}])
    refused = stager("submit", str(written("bad.json", [*maps, late])), "--workflow", "bad")
    assert refused.returncode == 2, refused.stderr
    assert "which task map-0 does not declare" in refused.stderr
    assert sum(cluster.client.status("bad").counts.values()) == 0


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [("dead dispatcher", 5, "is unreachable"), ("wrong token", 4, "refused the token")],
)
def test_a_worker_that_cannot_reach_its_dispatcher_says_so_and_exits(
    make_cluster: ClusterFactory, tmp_path: Path, case: str, code: int, text: str
) -> None:
    if case == "dead dispatcher":
        (port,) = free_ports(1)
        url, token = f"http://127.0.0.1:{port}", "not-the-token-4f2a"
        env = dict(os.environ)
    else:
        cluster = make_cluster()
        url, token, env = cluster.url, "not-the-token-4f2a", cluster.env
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stager",
            "worker",
            "--dispatcher",
            url,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--sandbox-dir",
            str(tmp_path / "sb"),
        ],
        env={
            **env,
            "STAGER_DISPATCHER_TOKEN": token,
            "STAGER_DISPATCHER_LOST_S": "2",
            "STAGER_LEASE_WAIT_S": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == code, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stager: error: ") and text in last
    assert "Traceback" not in done.stderr and token not in done.stderr


def sleepers(seconds: str) -> list[int]:
    """Pids of running ``sleep <seconds>`` processes."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == (
                b"sleep\0" + seconds.encode() + b"\0"
            ):
                found.append(int(entry.name))
    return found


def test_the_next_worker_kills_what_a_kill_9_left_running(
    make_cluster: ClusterFactory, prefix: S3Url, tmp_path: Path
) -> None:
    cluster = make_cluster()
    victim = cluster.add_worker("victim")
    sandboxes = cluster.work_dir / "victim" / "sandboxes"
    started = tmp_path / "started"
    submit(cluster.client, [task("long", f"touch {started}; sleep 317", prefix)], workflow="wf")
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert sleepers("317"), "the command should outlive its killed worker"
        assert len(list(sandboxes.iterdir())) == 1
        cluster.client.cancel("long")  # so the heir does not run it again
        cluster.add_worker("heir", "--sandbox-dir", str(sandboxes))
        deadline = time.monotonic() + 60
        while sleepers("317") or list(sandboxes.iterdir()):
            assert time.monotonic() < deadline, "the orphaned command or its sandbox survived"
            time.sleep(0.1)
    finally:
        for pid in sleepers("317"):  # never leave our own orphan behind
            os.kill(pid, signal.SIGKILL)


def test_workers_report_what_their_cache_gains_and_loses(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url
) -> None:
    cluster = make_cluster()
    # Beats far apart, so the eviction below usually lands before the first beat
    # after the completion: the completion itself must count as told.
    cluster.add_worker("w1", "--heartbeat-s", "4")
    url = prefix.child("ref")
    digest = store.put_bytes(url, b"reference bytes")
    body = task(
        "reader",
        "cat ref ref > out.txt",
        prefix,
        inputs=[{"source": str(url), "path": "ref", "digest": str(digest), "size": 15}],
    )
    after = task(
        "after",
        "wc -c < in.txt > out.txt",
        prefix,
        inputs=[{"source": "task://reader/out.txt", "path": "in.txt"}],
    )
    submit(cluster.client, [body, after], workflow="wf")
    wait_until_ended(cluster.client, "wf")

    def cached() -> int:
        (worker,) = cluster.client.status().workers
        return worker.cached_digests

    # The input, and reader's output (a task reads it); not after's output, read by none.
    assert cached() == 2
    cache_dir = cluster.work_dir / "w1" / "cache"
    evicted = NodeCache(cache_dir, quota_bytes=1 << 30).evict(all_unpinned=True)
    assert len(evicted) == 2
    assert store.get_bytes(prefix.child("out/after.txt")) == b"30\n"
    deadline = time.monotonic() + 30
    while cached() != 0:
        assert time.monotonic() < deadline, "the eviction never reached the dispatcher"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/heartbeat", {"worker": "w", "held": [1, 2]}),
        ("/v1/heartbeat", {"worker": "w", "held": [], "cache_bytes": "lots"}),
        ("/v1/lease", {"worker": "w", "cache": {"added": 5}}),
        ("/v1/tasks/t/complete", {"worker": "w", "attempt": 1, "result": "{not json"}),
        ("/v1/tasks", {"workflow": "w", "tasks": [{"id": "x", "command": ["true"], "inputs": 1}]}),
        ("/v1/tasks", {"workflow": "w", "tasks": [{"id": "x", "command": ["true"]}] * 2}),
        ("/v1/lease", ["not", "an", "object"]),
        ("/v1/lease", {"worker": "w", "cache": {"added": [[[[0]]]]}}),
        ("/v1/lease", b"[" * 100_000 + b"]" * 100_000),  # nested past the parser's depth
        ("/v1/tasks", b'{"workflow": "w", "tasks": ' + b"[" * 100_000 + b"]" * 100_001),
    ],
)
def test_malformed_requests_get_400_and_leave_no_traceback(
    make_cluster: ClusterFactory, path: str, body: Any
) -> None:
    cluster = make_cluster()
    response = urllib3.PoolManager().request(
        "POST",
        cluster.url + path,
        body=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {cluster.token_file.read_text().strip()}",
            VERSION_HEADER: str(PROTOCOL_VERSION),
        },
    )
    assert response.status == 400, response.data
    error = json.loads(response.data)["error"]
    assert error and "protocol" not in error  # refused for what it says, not its version
    assert "Traceback" not in cluster.log_of("dispatcher")


@pytest.mark.parametrize("version", [None, str(PROTOCOL_VERSION + 1), "1\u00e9"])
def test_a_request_of_another_protocol_version_is_refused_naming_both(
    make_cluster: ClusterFactory, version: str | None
) -> None:
    cluster = make_cluster()
    headers = {"Authorization": f"Bearer {cluster.token_file.read_text().strip()}"}
    if version is not None:
        headers[VERSION_HEADER] = version
    response = urllib3.PoolManager().request("GET", cluster.url + "/v1/status", headers=headers)
    assert response.status == 400, response.data
    error = json.loads(response.data)["error"]
    assert f"this one speaks {PROTOCOL_VERSION}" in error
    assert ("no protocol version" if version is None else "speaks protocol '") in error
    assert cluster.client.status().counts  # the right version is still served


def test_a_workers_tasks_never_see_its_s3_keys_or_its_token(
    s3_server: LocalS3Server, tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    env = {
        **s3_server.env(),
        "STAGER_STATE_DIR": str(tmp_path / "state"),
        "STAGER_DISPATCHER_TOKEN": "worker-env-token-value-1234",
        "SITE_LICENSE": "lic-42",
    }
    with LocalCluster(tmp_path / "cluster", env) as cluster:
        cluster.add_worker("w1", "--pass-env", "SITE_LICENSE")
        submit(cluster.client, [task("t", "env > out.txt", prefix)], workflow="wf")
        assert wait_until_ended(cluster.client, "wf")["done"] == 1, cluster.log_of("w1")
    seen = store.get_bytes(prefix.child("out/t.txt")).decode()
    assert s3_server.credentials.secret_key not in seen
    assert s3_server.credentials.access_key not in seen
    assert "worker-env-token-value" not in seen
    assert cluster.token_file.read_text().strip() not in seen
    assert "SITE_LICENSE=lic-42" in seen.splitlines()


def test_a_stale_attempt_resumed_after_its_lease_never_changes_an_accepted_output(
    make_cluster: ClusterFactory, store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    cluster = make_cluster(lease_s=6)
    stale = cluster.add_worker("stale")
    started = tmp_path / "started"
    # Each run writes different bytes, so a replaced output cannot go unseen.
    command = f"touch {started}; sleep 4; date +%s%N > out.txt; head -c 64 /dev/urandom >> out.txt"
    submit(cluster.client, [task("t", command, prefix)], workflow="wf")
    wait_for(started.exists)
    os.kill(stale.pid, signal.SIGSTOP)  # mid-command: its lease runs out, the task moves on
    try:
        cluster.add_worker("prompt")
        assert wait_until_ended(cluster.client, "wf")["done"] == 1, cluster.log_of("prompt")
    finally:
        os.kill(stale.pid, signal.SIGCONT)  # it finishes its run, stages out, and reports
    deadline = time.monotonic() + 60
    while "is stale" not in cluster.log_of("stale"):
        assert time.monotonic() < deadline, cluster.log_of("stale")
        time.sleep(0.2)
    accepted = cluster.client.task("t").result
    assert accepted is not None and cluster.client.task("t").attempt == 2
    (record,) = accepted.outputs
    assert digest_bytes(store.get_bytes(record.url)) == record.digest  # still the accepted bytes
    consumer = task(
        "consumer",
        "cat in.txt > out.txt",
        prefix,
        inputs=[{"source": "task://t/out.txt", "path": "in.txt"}],
    )
    submit(cluster.client, [consumer], workflow="wf")  # added to the producer's workflow
    assert wait_until_ended(cluster.client, "wf")["done"] == 2, cluster.log_of("prompt")
    assert store.get_bytes(prefix.child("out/consumer.txt")) == store.get_bytes(record.url)


def test_memo_hits_are_served_by_the_dispatcher_and_results_are_recorded_in_segments(
    make_cluster: ClusterFactory,
    store: ObjectStore,
    raw_client: Any,
    prefix: S3Url,
    tmp_path: Path,
) -> None:
    """A task computed before (same command, inputs, outputs) is not run again: the
    dispatcher answers from its own results, for inputs named by digest (in the lease)
    and for inputs only the node can name (an object another tool wrote, asked for).
    Results go to S3 as segments, which read back; no per-task manifest is written."""
    runs = tmp_path / "runs"
    ref = prefix.child("ref one.txt")
    raw_client.put_object(Bucket=ref.bucket, Key=ref.key, Body=b"plain upload\n")  # no digest
    pushed = prefix.child("pushed.txt")
    store.put_bytes(pushed, b"pushed\n")
    pushed_digest = digest_bytes(b"pushed\n")
    bodies = [
        task("a", f"echo a >> {runs}; echo a > out.txt", prefix),
        task(
            "b",
            f"echo b >> {runs}; cat in.txt > out.txt",
            prefix,
            inputs=[{"source": str(pushed), "path": "in.txt", "digest": str(pushed_digest)}],
        ),
        task(
            "c",
            f"echo c >> {runs}; cat ref.txt > out.txt",
            prefix,
            inputs=[{"source": str(ref), "path": "ref.txt"}],
        ),
    ]
    cluster = make_cluster()
    cluster.add_worker("w1")
    submit(cluster.client, bodies, workflow="first")
    assert wait_until_ended(cluster.client, "first")["done"] == 3
    assert sorted(runs.read_text().split()) == ["a", "b", "c"]

    again = [{**body, "id": f"{body['id']}-again"} for body in bodies]
    submit(cluster.client, again, workflow="second")
    assert wait_until_ended(cluster.client, "second")["done"] == 3
    assert sorted(runs.read_text().split()) == ["a", "b", "c"]  # none ran again
    assert cluster.client.status("second").memo_hits == 3
    firsts = [cluster.client.task(f"first/{body['id']}").result for body in bodies]
    for body, first in zip(again, firsts, strict=True):
        info = cluster.client.task(f"second/{body['id']}")
        assert info.memoized and info.result is not None and first is not None
        assert info.result.outputs == first.outputs

    keys = {first.task_key for first in firsts if first is not None}
    listed = [url.key for url, _, _ in store.list(prefix.child("results/"))]
    assert listed and all("/segments/" in key and key.endswith(".jsonl") for key in listed)
    assert {r.task_key for r in recorded_results(store, prefix.child("results/"))} == keys


def test_a_dispatcher_started_empty_with_memo_from_knows_what_was_computed(
    make_cluster: ClusterFactory, prefix: S3Url, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    body = task("a", f"echo a >> {runs}; echo a > out.txt", prefix)
    first = make_cluster()
    first.add_worker("w1")
    submit(first.client, [body], workflow="wf")
    assert wait_until_ended(first.client, "wf")["done"] == 1
    first.stop()  # its database, and its memo, are gone with it
    results = str(prefix.child("results/"))
    second = make_cluster(dispatcher_args=["--memo-from", results])
    second.add_worker("w2")
    submit(second.client, [{**body, "id": "again"}], workflow="wf")
    assert wait_until_ended(second.client, "wf")["done"] == 1
    assert runs.read_text().split() == ["a"]  # not run again
    assert second.client.task("wf/again").memoized
    assert f"memo: 1 results read from {results}" in second.log_of("dispatcher")
