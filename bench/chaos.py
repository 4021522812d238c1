"""``stager bench chaos``: a workflow that must survive nodes dying and S3 misbehaving.

A fan-out/fan-in workflow using the three persistence policies runs twice
on the same machine: once undisturbed, once under a fault driver that

- ``kill -9``s a worker (with its running commands) at random points of the
  run (when a random share of its tasks has ended), wipes
  its scratch (cache, outbox, sandboxes) and starts a fresh worker;
- SIGSTOPs one worker for longer than its lease, then lets it go on (a stale
  attempt that must not overwrite anything);
- puts a fault-injecting proxy (:mod:`bench.faultproxy`) between every
  worker and S3.

Then it counts what a user would: tasks not done (lost), final outputs
missing or corrupt in S3 (read straight from the server with plain boto3
and hashed here, not through stager's transfer path), attempts beyond the
first, tasks recovery ran again and the bytes they remade, and the
makespan against the undisturbed run.

The workflow: ``maps`` tasks each read a shared reference and write a
checksum (``s3``) and a part (``local``); every ten parts are merged by a
reduce (``mirror: 1``); one gather reads every merge and writes the final
summary (``s3``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from bench.faultproxy import NO_FAULTS, FaultProxy, Faults
from stager.digest import Digest, digest_bytes
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.protocol import TaskState
from worker_hooks.task.result import FileRecord, Persist
from worker_hooks.task.workflow import workflow_tasks

BUCKET = "bench-chaos"
LEASE_S = 5.0
PART_BYTES = 64 * 1024


@dataclass(frozen=True)
class ChaosShape:
    tasks: int = 1000
    workers: int = 4
    kills: int = 10
    stops: int = 1
    faults: Faults = field(default_factory=Faults)  # NO_FAULTS: only the kills and stops
    seed: int = 11
    give_up_s: float = 600.0  # tasks not done by then (or 10x the calm run) count as lost


@dataclass(frozen=True)
class RunFigures:
    seconds: float
    tasks: int
    done: int
    lost: int  # tasks not done at the end
    missing: int  # final outputs not in S3
    corrupt: int  # final outputs whose bytes do not hash to their recorded digest
    damaged: tuple[str, ...]  # the first missing or corrupt ones, by URL
    attempts_beyond_first: int
    recomputed_tasks: int  # tasks recovery ran again
    recomputed_bytes: int
    kills: int
    stops: int
    s3_faults: dict[str, int]


@dataclass(frozen=True)
class ChaosFigures:
    calm: RunFigures
    chaos: RunFigures
    makespan_ratio: float


def chaos_workflow(shape: ChaosShape, reference: S3Url, reference_digest: Digest) -> Any:
    maps = max(10, (shape.tasks - 1) * 10 // 11)
    out = S3Url(BUCKET, "out/")
    map_tasks = [
        {
            "id": f"map-{n:05d}",
            "command": "cksum < reference.bin > sum.txt; "
            f"{{ echo {n}; head -c {PART_BYTES} /dev/urandom; }} > part.bin",
            "inputs": [
                {"source": str(reference), "path": "reference.bin", "digest": str(reference_digest)}
            ],
            "outputs": [
                {"path": "sum.txt", "to": str(out.child(f"sums/{n:05d}.txt"))},
                {
                    "path": "part.bin",
                    "to": str(out.child(f"parts/{n:05d}.bin")),
                    "persist": "local",
                },
            ],
        }
        for n in range(maps)
    ]
    groups = [map_tasks[i : i + 10] for i in range(0, maps, 10)]
    reduces = [
        {
            "id": f"reduce-{g:04d}",
            "command": "cat parts/* > merged.bin",
            "inputs": [
                {"source": f"task://{m['id']}/part.bin", "path": f"parts/{m['id']}"} for m in group
            ],
            "outputs": [
                {
                    "path": "merged.bin",
                    "to": str(out.child(f"merged/{g:04d}.bin")),
                    "persist": "mirror",
                },
            ],
        }
        for g, group in enumerate(groups)
    ]
    gather = {
        "id": "gather",
        "command": "cksum merged/* > final.txt",
        "inputs": [
            {"source": f"task://{r['id']}/merged.bin", "path": f"merged/{r['id']}"} for r in reduces
        ],
        "outputs": [{"path": "final.txt", "to": str(out.child("final.txt"))}],
    }
    return {
        "name": "chaos",
        "defaults": {"shell": True, "timeout_s": 300, "results": f"s3://{BUCKET}/results/"},
        "tasks": [*map_tasks, *reduces, gather],
    }


class FaultDriver:
    """Kills and stops workers, in a thread, each when a random share of the workflow's
    tasks has ended (between 10 and 80 %): however fast the run, every fault lands
    while there is work left."""

    def __init__(
        self, cluster: LocalCluster, shape: ChaosShape, progress: Callable[[], float]
    ) -> None:
        self.cluster = cluster
        self.shape = shape
        self.progress = progress
        self.random = random.Random(shape.seed)
        self.plan = [(self.random.uniform(0.1, 0.8), "kill") for _ in range(shape.kills)]
        self.plan += [(self.random.uniform(0.2, 0.6), "stop")] * shape.stops
        self.plan.sort()
        self.kills = self.stops = 0
        self.born = shape.workers
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True)
        self._stopped: list[tuple[threading.Timer, subprocess.Popen[bytes]]] = []

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self._done.set()
        self._thread.join(timeout=LEASE_S * 4)
        for timer, process in self._stopped:  # the run ended first: resume them now
            timer.cancel()
            _resume(process)

    def _alive(self) -> list[str]:
        return [n for n, p in self.cluster.workers.items() if p.poll() is None]

    def _drive(self) -> None:
        for at, what in self.plan:
            while self.progress() < at:
                if self._done.wait(0.05):
                    return
            alive = self._alive()
            if not alive:
                continue
            victim = self.random.choice(alive)
            process = self.cluster.workers[victim]
            if what == "kill":
                os.killpg(process.pid, signal.SIGKILL)  # the node, and what runs on it
                process.wait()
                shutil.rmtree(self.cluster.work_dir / victim, ignore_errors=True)
                self.born += 1
                self.cluster.add_worker(f"node-{self.born}", *worker_args())
                self.kills += 1
            else:
                # Resumed past its lease, by a timer: the faults after it land meanwhile
                # (a fast run may end before it is resumed).
                os.killpg(process.pid, signal.SIGSTOP)
                timer = threading.Timer(LEASE_S * 1.5, _resume, (process,))
                timer.daemon = True
                timer.start()
                self._stopped.append((timer, process))
                self.stops += 1


def _resume(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGCONT)


def worker_args() -> tuple[str, ...]:
    return ("--serve", "127.0.0.1:0", "--slots", "2", "--heartbeat-s", "1")


@dataclass
class _Checked:
    missing: int = 0
    corrupt: int = 0
    reruns: int = 0
    remade: int = 0
    damaged: list[str] = field(default_factory=list)


def _verify(cluster: LocalCluster, raw: Any, ids: list[str]) -> _Checked:
    """What S3 holds of the recorded outputs, read with plain boto3 and hashed here."""
    checked = _Checked()
    for task_id in ids:
        info = cluster.client.task(task_id)
        checked.reruns += info.reruns > 0
        if info.state is not TaskState.DONE:
            checked.damaged.append(
                f"not done: {task_id} ({info.state.value}, attempt {info.attempt}"
                f" on {info.worker}: {info.error})"
            )
        if info.result is None:
            continue
        checked.remade += info.reruns * sum(r.size for r in info.result.outputs)
        for record in info.result.outputs:
            if record.kept is Persist.LOCAL:
                continue  # an intermediate: its readers checked it; the final output rests on it
            found = _read_when_written(raw, record)
            if found is None:
                checked.missing += 1
                checked.damaged.append(f"missing {record.url} ({task_id})")
            elif found != record.digest:
                checked.corrupt += 1
                checked.damaged.append(f"corrupt {record.url} ({task_id}, {record.kept.value})")
    return checked


def _read_when_written(raw: Any, record: FileRecord, wait_s: float = 60) -> Digest | None:
    """The digest of what S3 holds at the record's URL (None: nothing).

    An ``s3`` output is there once its task is done. A ``mirror`` output may
    still be on its way, and until it lands the key may hold an earlier
    attempt's bytes (written behind by a node that was stopped meanwhile; a
    later attempt's write replaces them, never the reverse): those are read
    again until they match or ``wait_s`` has passed.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            data = raw.get_object(Bucket=record.url.bucket, Key=record.url.key)["Body"].read()
            found: Digest | None = Digest(xxhash.xxh3_128(data).digest(), "xxh3-128")
        except raw.exceptions.NoSuchKey:
            found = None
        settled = found == record.digest or record.kept is Persist.S3
        if settled or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _run(
    work: Path, server: LocalS3Server, shape: ChaosShape, *, chaos: bool, expected_s: float
) -> RunFigures:
    env = {**server.env(), "STAGER_STATE_DIR": str(work / "state")}
    # Both runs go through the proxy (the calm one with no faults), so that what
    # the ratio shows is the faults' cost, not the proxy's forwarding.
    proxy = FaultProxy(server.endpoint_url, shape.faults if chaos else NO_FAULTS)
    env["AWS_ENDPOINT_URL"] = proxy.start()
    raw = server.client()
    settings = server.settings(state_dir=work / "state", progress=False)
    with ObjectStore(settings, credentials=server.credentials) as store:
        reference = S3Url(BUCKET, f"{work.name}/reference.bin")
        data = os.urandom(1024 * 1024)
        store.put_bytes(reference, data)
        name, tasks = workflow_tasks(chaos_workflow(shape, reference, digest_bytes(data)), "chaos")
    try:
        with LocalCluster(work / "cluster", env, policy=Policy.FIFO, lease_s=LEASE_S) as cluster:
            names = [f"node-{n + 1}" for n in range(shape.workers)]
            for worker in names:
                cluster.add_worker(worker, *worker_args())
            cluster.wait_for_workers(names)
            ids = [task.id for task in tasks]

            def progress() -> float:
                status = cluster.client.status(str(name))
                return sum(status.count(state) for state in TaskState if state.final) / len(ids)

            driver = FaultDriver(cluster, shape, progress) if chaos else None
            started = time.monotonic()
            cluster.client.submit(tasks, workflow=str(name))
            if driver is not None:
                driver.start()
            while True:
                status = cluster.client.status(str(name))
                if sum(status.count(state) for state in TaskState if state.final) == len(ids):
                    break  # done, or failed for good
                if time.monotonic() - started > max(shape.give_up_s, expected_s * 10):
                    break  # counted below as lost
                time.sleep(0.5)
            seconds = time.monotonic() - started
            if driver is not None:
                driver.finish()
            checked = _verify(cluster, raw, ids)
            attempts = len(cluster.client.assignments())
    finally:
        proxy.stop()
    done = status.count(TaskState.DONE)
    return RunFigures(
        seconds=round(seconds, 2),
        tasks=len(ids),
        done=done,
        lost=len(ids) - done,
        missing=checked.missing,
        corrupt=checked.corrupt,
        damaged=tuple(checked.damaged[:20]),
        attempts_beyond_first=attempts - len(ids),
        recomputed_tasks=checked.reruns,
        recomputed_bytes=checked.remade,
        kills=driver.kills if chaos and driver else 0,
        stops=driver.stops if chaos and driver else 0,
        s3_faults=dict(proxy.injected),
    )


def run_chaos_bench(work: Path, shape: ChaosShape) -> ChaosFigures:
    with LocalS3Server(work / "s3") as server:
        server.client().create_bucket(Bucket=BUCKET)
        calm = _run(work / "calm", server, shape, chaos=False, expected_s=0)
        chaos = _run(work / "chaos", server, shape, chaos=True, expected_s=calm.seconds)
    return ChaosFigures(calm, chaos, round(chaos.seconds / calm.seconds, 2))


def chaos_markdown(figures: ChaosFigures) -> str:
    c, q = figures.chaos, figures.calm
    s3 = "S3 faults" if sum(c.s3_faults.values()) > c.s3_faults.get("none", 0) else "no S3 faults"
    return (
        f"| run | tasks | done | lost | missing | corrupt | extra attempts | recomputed | s |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| undisturbed | {q.tasks} | {q.done} | {q.lost} | {q.missing} | {q.corrupt} | "
        f"{q.attempts_beyond_first} | {q.recomputed_tasks} | {q.seconds} |\n"
        f"| {c.kills} kills, {c.stops} stops, {s3} | {c.tasks} | {c.done} | {c.lost} | "
        f"{c.missing} | {c.corrupt} | {c.attempts_beyond_first} | {c.recomputed_tasks} "
        f"({c.recomputed_bytes / 1024:.0f} KiB) | {c.seconds} |\n\n"
        f"Makespan under faults: **{figures.makespan_ratio}x** the undisturbed run. "
        f"S3 requests through the proxy: {c.s3_faults}.\n"
        + "".join(f"\n- {line}" for line in c.damaged)
    )
