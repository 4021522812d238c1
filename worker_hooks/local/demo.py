"""``stager demo``: the whole data path on one machine, end to end (the main job).

It starts the embedded S3 server, a dispatcher and three workers (each with
its own scratch and node file service: separate "nodes"), pushes a
generated dataset (one shared reference plus one small input per task),
submits a fan-out/fan-in workflow, waits with progress, verifies every
output against its recorded digest, prints a summary and stops everything
it started. The workflow uses the three persistence policies:

- map tasks read the reference and their input; each writes a checksum
  (``s3``) and a sample (``local``: it stays in its node's cache);
- the reduce reads every checksum and every sample (from the other nodes'
  caches: peer to peer) and writes a summary (``s3``) and the merged
  samples (``mirror: 1``: done once a peer holds a verified copy, then
  written behind to S3).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from stager.digest import digest_bytes
from stager.digestcache import DigestCache
from stager.errors import IntegrityError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.push import PushReport, push
from stager.s3server import LocalS3Server
from stager.units import format_size
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.dispatch.follow import wait_for_workflow
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.inspect.cli import write_report
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState
from worker_hooks.task.result import Persist
from worker_hooks.task.workflow import workflow_tasks

BUCKET = "stager-demo"
MiB = 1024 * 1024
SAMPLE_BYTES = 256 * 1024


@dataclass(frozen=True)
class DemoShape:
    map_tasks: int = 30
    workers: int = 3
    reference_bytes: int = 64 * MiB
    task_input_bytes: int = 16 * 1024
    policy: Policy = Policy.GOOD_CACHE_COMPUTE
    chaos: bool = False  # kill -9 a worker mid-workflow and wipe its scratch


@dataclass(frozen=True)
class DemoSummary:
    tasks: int
    wall_s: float
    policy: str
    bytes_from_s3: int
    bytes_from_cache: int
    bytes_from_peers: int
    bytes_written_behind: int
    cache_hit_rate: float | None
    outputs_verified: int
    outputs_on_nodes: int  # `local` outputs: verified by their readers, never in S3
    tasks_per_worker: dict[str, int]
    reduce_worker: str
    killed: str | None = None  # with --chaos: the worker killed, and its scratch wiped
    recomputed: tuple[str, ...] = ()  # tasks recovery ran again
    extra_attempts: int = 0
    report: Path | None = None  # the run report (HTML)


def generate_dataset(root: Path, shape: DemoShape) -> Path:
    """Write the frontend's dataset under ``root``; return its directory."""
    dataset = root / "dataset"
    (dataset / "inputs").mkdir(parents=True, exist_ok=True)
    with (dataset / "reference.bin").open("wb") as out:
        for _ in range(0, shape.reference_bytes, 4 * MiB):
            out.write(os.urandom(min(4 * MiB, shape.reference_bytes - out.tell())))
    for index in range(shape.map_tasks):
        (dataset / "inputs" / f"task-{index:04d}.dat").write_bytes(
            os.urandom(shape.task_input_bytes)
        )
    return dataset


def build_workflow(pushed: PushReport, shape: DemoShape) -> dict[str, Any]:
    """Map tasks reading the reference and one input each; a reduce over their outputs.

    The workflow document, as a user would write it (the demo saves it).
    """
    by_name = {Path(e.path).name: e for e in pushed.manifest.entries}

    def staged(name: str, path: str) -> dict[str, Any]:
        entry = by_name[name]
        return {"source": entry.url, "path": path, "digest": str(entry.digest), "size": entry.size}

    out = S3Url(BUCKET, "run1/out/")
    maps = [
        {
            "id": f"map-{n:04d}",
            "command": "{ cksum < reference.bin; cksum < input.dat; } > result.txt; "
            f"{{ cat input.dat; tail -c {SAMPLE_BYTES} reference.bin; }} > sample.bin",
            "inputs": [
                staged("reference.bin", "reference.bin"),
                staged(f"task-{n:04d}.dat", "input.dat"),
            ],
            "outputs": [
                {"path": "result.txt", "to": str(out.child(f"map-{n:04d}.txt"))},
                {
                    "path": "sample.bin",
                    "to": str(out.child(f"samples/map-{n:04d}.bin")),
                    "persist": "local",
                },
            ],
        }
        for n in range(shape.map_tasks)
    ]
    reduce = {
        "id": "reduce",
        "command": "cat parts/*/result.txt > summary.txt; cat samples/*/sample.bin > merged.bin",
        # Collections: every map's file, each in a folder named after its map.
        "inputs": [
            {"source": "task://map-*/result.txt", "path": "parts/"},
            {"source": "task://map-*/sample.bin", "path": "samples/"},
        ],
        "outputs": [
            {"path": "summary.txt", "to": str(out.child("summary.txt"))},
            {"path": "merged.bin", "to": str(out.child("merged.bin")), "persist": "mirror"},
        ],
    }
    return {
        "name": "demo-run1",
        "defaults": {"shell": True, "timeout_s": 300, "results": f"s3://{BUCKET}/run1/results/"},
        "tasks": [*maps, reduce],
    }


@dataclass(frozen=True)
class Verified:
    in_s3: int  # outputs read back from S3 and checked against their digests
    on_nodes: int  # `local` outputs (verified by the tasks that read them)
    mirrored_bytes: int


REPORT_NAME = "stager-demo-report.html"  # without --work-dir, written in the current folder
CHAOS_LEASE_S = 5.0  # with --chaos: a silent worker is found lost after this
WORKER_ARGS = ("--serve", "127.0.0.1:0", "--heartbeat-s", "1")


class _Chaos:
    """Kills one worker (kill -9 of its process group) once a third of the tasks are
    done, wipes its scratch, and starts a fresh worker in its place."""

    def __init__(
        self, cluster: LocalCluster, workflow: str, total: int, echo: Callable[[str], None]
    ) -> None:
        self.cluster = cluster
        self.workflow = workflow
        self.total = total
        self.echo = echo
        self.victim: str | None = None
        self._thread = threading.Thread(target=self._strike, daemon=True)
        self._thread.start()

    def _strike(self) -> None:
        client = self.cluster.client
        while client.status(self.workflow).count(TaskState.DONE) < self.total // 3:
            time.sleep(0.05)
        # The busiest worker: the one whose loss costs the most.
        done_by = Counter(a.worker for a in client.assignments())
        victim = max(self.cluster.workers, key=lambda w: done_by.get(w, 0))
        process = self.cluster.workers[victim]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(self.cluster.work_dir / victim, ignore_errors=True)
        self.victim = victim
        self.echo(f"chaos:   killed {victim} (kill -9) and wiped its scratch")
        self.cluster.add_worker(f"{victim}-replacement", *WORKER_ARGS)

    def join(self) -> None:
        self._thread.join(timeout=60)


def verify_outputs(
    client: DispatcherClient, store: ObjectStore, task_ids: list[str], *, wait_s: float = 60.0
) -> Verified:
    """Check every recorded output: read it back from S3 and check its digest, waiting
    (bounded) for ``mirror`` ones to be written behind; a ``local`` one must not be in S3
    (its readers verified it)."""
    checked = local = mirrored = 0
    deadline = time.monotonic() + wait_s
    for task_id in task_ids:
        result = client.task(task_id).result
        if result is None:
            raise IntegrityError(f"demo: task {task_id} has no recorded result")
        for record in result.outputs:
            if record.kept is Persist.LOCAL:
                if store.head(record.url) is not None:
                    raise IntegrityError(f"demo: the local output {record.url} reached S3")
                local += 1
                continue
            while record.kept is Persist.MIRROR and store.head(record.url) is None:
                if time.monotonic() > deadline:
                    raise IntegrityError(f"demo: {record.url} was not written behind")
                time.sleep(0.1)
            mirrored += record.size if record.kept is Persist.MIRROR else 0
            data = store.get_bytes(record.url)
            if digest_bytes(data) != record.digest or len(data) != record.size:
                raise IntegrityError(f"demo: {record.url} does not match its recorded digest")
            checked += 1
    return Verified(checked, local, mirrored)


def written_behind(client: DispatcherClient, workflow: str, expected: int) -> int:
    """The bytes the dispatcher heard were written behind, once it heard of ``expected``
    (workers report with their heartbeats), or what it heard after a bounded wait."""
    deadline = time.monotonic() + 30
    while (done := client.status(workflow).bytes_written_behind) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return done


def run_demo(
    work_dir: Path,
    *,
    echo: Callable[[str], None],
    shape: DemoShape | None = None,
    report_path: Path | None = None,
) -> DemoSummary:
    """Run the demo in ``work_dir``; raise a StagerError if anything is off. The run
    report goes to ``report_path`` (default: ``work_dir/report.html``)."""
    shape = shape or DemoShape()
    report_path = report_path or work_dir / "report.html"
    echo(f"starting the embedded S3 server (data in {work_dir / 's3'})")
    with LocalS3Server(work_dir / "s3") as server:
        echo(f"S3 endpoint {server.endpoint_url}")
        settings = server.settings(state_dir=work_dir / "state", progress=False)
        with (
            ObjectStore(settings, credentials=server.credentials) as store,
            DigestCache(settings.state_dir / "digests.sqlite") as digests,
        ):
            store.ensure_bucket(BUCKET)
            dataset = generate_dataset(work_dir / "frontend", shape)
            dest = S3Url(BUCKET, "run1/data/")
            pushed = push([str(dataset)], dest, store=store, digests=digests)
            echo(
                f"push:    {len(pushed.manifest.entries)} files "
                f"({format_size(pushed.uploaded_bytes)}) in {pushed.seconds:.2f} s"
            )
            again = push([str(dataset)], dest, store=store, digests=digests)
            echo(f"re-push: {again.skipped_files} unchanged files skipped, 0 bytes sent")
            workflow = build_workflow(pushed, shape)
            (work_dir / "workflow.json").write_text(json.dumps(workflow, indent=1))
            env = {**server.env(), "STAGER_STATE_DIR": str(work_dir / "state")}
            name, tasks = workflow_tasks(workflow, "the demo workflow")
            lease_s = CHAOS_LEASE_S if shape.chaos else 30.0
            cluster_dir = work_dir / "cluster"
            with LocalCluster(cluster_dir, env, policy=shape.policy, lease_s=lease_s) as cluster:
                names = [f"node-{n + 1}" for n in range(shape.workers)]
                for worker in names:
                    cluster.add_worker(worker, *WORKER_ARGS)
                cluster.wait_for_workers(names)
                echo(f"dispatcher {cluster.url}; workers: {', '.join(names)}")
                started = time.monotonic()
                cluster.client.submit(tasks, workflow=str(name))
                ids = [task.id for task in tasks]
                echo(f"submitted {len(ids)} tasks ({shape.map_tasks} map + 1 reduce)")
                chaos = _Chaos(cluster, str(name), len(ids), echo) if shape.chaos else None
                status = wait_for_workflow(cluster.client, str(name), echo=echo)
                if chaos is not None:
                    chaos.join()
                wall_s = time.monotonic() - started
                verified = verify_outputs(cluster.client, store, ids)
                behind = written_behind(cluster.client, str(name), verified.mirrored_bytes)
                assignments = cluster.client.assignments()
                per_worker = Counter(a.worker for a in assignments)
                reduce_worker = cluster.client.task("reduce").worker or "?"
                recomputed = tuple(i for i in ids if cluster.client.task(i).reruns)
                report = write_report(cluster.client, str(name), report_path)
    summary = DemoSummary(
        tasks=len(ids),
        wall_s=round(wall_s, 2),
        policy=status.policy,
        bytes_from_s3=status.bytes_from_s3,
        bytes_from_cache=status.bytes_from_cache,
        bytes_from_peers=status.bytes_from_peers,
        bytes_written_behind=behind,
        cache_hit_rate=status.cache_hit_rate,
        outputs_verified=verified.in_s3,
        outputs_on_nodes=verified.on_nodes,
        tasks_per_worker=dict(sorted(per_worker.items())),
        reduce_worker=reduce_worker,
        killed=chaos.victim if chaos is not None else None,
        recomputed=recomputed,
        extra_attempts=len(assignments) - len(ids),
        report=report,
    )
    hit = summary.cache_hit_rate or 0.0
    echo(f"done:    {len(ids)} tasks in {wall_s:.1f} s with policy {summary.policy}")
    echo(
        f"inputs:  {format_size(summary.bytes_from_s3)} from S3, "
        f"{format_size(summary.bytes_from_cache)} from node caches (hit rate {hit:.0%}), "
        f"of which {format_size(summary.bytes_from_peers)} peer to peer"
    )
    echo(f"outputs: {format_size(summary.bytes_written_behind)} mirrored, then written behind")
    if summary.killed is not None:
        echo(
            f"chaos:   {summary.killed} killed (kill -9) and its scratch wiped; "
            f"{len(summary.recomputed)} tasks recomputed for the outputs it took, "
            f"{summary.extra_attempts} attempts beyond the first"
        )
    echo("per worker: " + ", ".join(f"{w} {n}" for w, n in summary.tasks_per_worker.items()))
    echo(
        f"verified {verified.in_s3} outputs in S3 against their recorded digests; "
        f"{verified.on_nodes} local outputs stayed on their nodes"
    )
    echo(f"report:  {report} (a timeline per node, where input bytes came from)")
    echo("stopped the workers, the dispatcher and the S3 server; demo complete")
    return summary


@click.command(
    "demo",
    epilog="""\b
Examples:
  stager demo                      # in a temporary directory, removed afterwards
  stager demo --work-dir ./demo    # keep the data, caches, logs and workflow file
  stager demo --tasks 100 --policy max-cache-hit
  stager demo --chaos              # a worker killed mid-workflow, its disk wiped: all verified
""",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep everything here instead of a temporary directory.",
)
@click.option("--tasks", "map_tasks", default=30, show_default=True, help="Map tasks.")
@click.option("--workers", default=3, show_default=True, help="Worker processes.")
@click.option(
    "--policy",
    type=click.Choice([p.value for p in Policy]),
    default=Policy.GOOD_CACHE_COMPUTE.value,
    show_default=True,
)
@click.option(
    "--chaos", is_flag=True, help="Kill -9 a worker a third of the way and wipe its scratch."
)
def demo_command(
    work_dir: Path | None, map_tasks: int, workers: int, policy: str, chaos: bool
) -> None:
    """Run the whole data path on this machine: S3 server, dispatcher, three workers.

    Pushes a dataset (a 64 MiB reference and one small input per task),
    runs a fan-out/fan-in workflow on three worker processes with separate
    caches, checks every output in S3 against its digest, then stops
    everything it started.
    """
    shape = DemoShape(map_tasks=map_tasks, workers=workers, policy=Policy(policy), chaos=chaos)
    if work_dir is not None:
        run_demo(work_dir, echo=click.echo, shape=shape)
        return
    with tempfile.TemporaryDirectory(prefix="stager-demo-") as scratch:
        # The scratch goes; the report stays, here.
        run_demo(Path(scratch), echo=click.echo, shape=shape, report_path=Path(REPORT_NAME))
