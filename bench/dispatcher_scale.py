"""``stager bench dispatcher-scale``: one dispatcher under many tasks and many workers.

A real dispatcher process (its own SQLite file, no S3: the dispatcher never
talks to it) and:

1. **Submission**: ``tasks`` independent ``true`` tasks, submitted in chunks
   of ``chunk`` as ``stager submit`` would send them; the time it takes and
   the dispatcher's peak resident memory after it.
2. **Load**: ``workers`` simulated one-slot workers, spread over
   ``processes`` processes of threads, each doing what a real worker's loop
   does: lease one task (no long poll while the queue has work), hold it for
   ``task_s`` as if running it, report it done with an empty result (through
   ``POST /v1/completions``, as workers do), and heartbeat every
   ``heartbeat_s`` with what it holds. For ``duration_s``.
   Reported: the lease round trip (p50, p99), completions per second, and
   the database file's size (with its WAL) at the end.

Nothing here is a test: figures go to JSON and markdown like every bench.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stager.errors import StagerError
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import Completion, HeartbeatRequest, Held
from worker_hooks.task.result import ResultManifest


@dataclass(frozen=True)
class ScaleFigures:
    tasks: int
    submit_s: float
    submitted_per_s: float
    dispatcher_rss_mib: float  # peak, after submission
    workers: int
    processes: int
    task_s: float
    duration_s: float
    completions: int
    completions_per_s: float
    lease_rtt_p50_ms: float
    lease_rtt_p99_ms: float
    lease_errors: int
    db_mib: float  # the SQLite file and its WAL, at the end


@dataclass(frozen=True)
class _Load:
    url: str
    token: str
    worker_ids: tuple[str, ...]
    task_s: float
    heartbeat_s: float
    duration_s: float


def _simulate(load: _Load) -> tuple[list[float], int, int]:
    """One process of simulated workers, a thread each: lease round trips (s),
    completions, errors."""
    client = DispatcherClient(load.url, load.token, timeout_s=60)
    rtts: list[float] = []
    counts = {"done": 0, "errors": 0}
    guard = threading.Lock()
    deadline = time.monotonic() + load.duration_s

    def worker(worker_id: str) -> None:
        next_beat = time.monotonic() + load.heartbeat_s
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                reply = client.lease(worker_id, 1, wait_s=0)
            except StagerError:
                with guard:
                    counts["errors"] += 1
                time.sleep(0.1)
                continue
            took = time.perf_counter() - started
            with guard:
                rtts.append(took)
            if not reply.leases:
                time.sleep(0.05)
                continue
            (lease,) = reply.leases
            time.sleep(load.task_s)
            if time.monotonic() > next_beat:
                held = (Held(lease.task_id, lease.attempt),)
                client.heartbeat(HeartbeatRequest(worker_id, held))
                next_beat = time.monotonic() + load.heartbeat_s
            result = ResultManifest(
                task_id=lease.task_id,
                task_key="simulated",
                command=lease.spec.command,
                exit_code=0,
                host="simulated",
                started_at="2026-01-01T00:00:00Z",
            )
            client.complete_many(worker_id, [Completion(lease.task_id, lease.attempt, result)])
            with guard:
                counts["done"] += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in load.worker_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rtts, counts["done"], counts["errors"]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def run_scale_bench(
    work: Path,
    *,
    tasks: int,
    workers: int,
    processes: int,
    task_s: float,
    heartbeat_s: float,
    duration_s: float,
    chunk: int = 10_000,
) -> ScaleFigures:
    with LocalCluster(work / "cluster", {}, policy=Policy.FIFO, lease_s=120) as cluster:
        assert cluster.dispatcher is not None
        started = time.perf_counter()
        for first in range(0, tasks, chunk):
            specs = [
                parse_spec({"id": f"t{n}", "command": ["true"], "results": "s3://scale/r/"})
                for n in range(first, min(tasks, first + chunk))
            ]
            cluster.client.submit(specs, workflow="scale")
        submit_s = time.perf_counter() - started
        rss = _peak_rss_mib(cluster.dispatcher.pid)

        token = cluster.token_file.read_text().strip()
        ids = [f"sim{n}" for n in range(workers)]
        loads = [
            _Load(cluster.url, token, tuple(ids[p::processes]), task_s, heartbeat_s, duration_s)
            for p in range(processes)
        ]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            outcomes = pool.map(_simulate, loads)
        database = work / "cluster" / "dispatcher.sqlite"
        db_bytes = sum(
            path.stat().st_size
            for path in (database, database.with_name(database.name + "-wal"))
            if path.exists()
        )
    rtts = [rtt for outcome in outcomes for rtt in outcome[0]]
    done = sum(outcome[1] for outcome in outcomes)
    return ScaleFigures(
        tasks=tasks,
        submit_s=round(submit_s, 2),
        submitted_per_s=round(tasks / submit_s, 1),
        dispatcher_rss_mib=rss,
        workers=workers,
        processes=processes,
        task_s=task_s,
        duration_s=duration_s,
        completions=done,
        completions_per_s=round(done / duration_s, 1),
        lease_rtt_p50_ms=round(statistics.median(rtts) * 1000, 2) if rtts else 0.0,
        lease_rtt_p99_ms=round(_percentile(rtts, 0.99) * 1000, 2),
        lease_errors=sum(outcome[2] for outcome in outcomes),
        db_mib=round(db_bytes / 2**20, 1),
    )
