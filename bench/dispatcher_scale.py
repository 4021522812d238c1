"""``stager bench dispatcher-scale``: one dispatcher under many tasks and many workers.

A real dispatcher process (its own SQLite file, no S3: the dispatcher never
talks to it) and:

1. **Submission**: ``tasks`` independent ``true`` tasks, submitted in chunks
   of ``chunk`` as ``stager submit`` would send them; the time it takes and
   the dispatcher's peak resident memory after it.
2. **Load**: ``workers`` simulated one-slot workers, coroutines spread over
   ``processes`` processes, each doing what a real worker's loop does: hold
   a task for ``task_s`` on average (from half to one and a half times it)
   as if running it, report it done with an empty result through
   ``POST /v1/completions``, asking in the same request for the task that
   fills its slot (as workers do), lease on its own only when that brought
   none (no long poll while the queue has work), and heartbeat every
   ``heartbeat_s`` with what it holds. Workers start spread over the first
   ``task_s``, and the load runs for ``duration_s``. Reported: the round
   trip of the requests that lease (p50, p99), completions per second, and
   the database file's size (with its WAL) at the end.

Nothing here is a test: figures go to JSON and markdown like every bench.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp

from stager.errors import StagerError
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import (
    PROTOCOL_VERSION,
    VERSION_HEADER,
    Completion,
    CompletionsReply,
    CompletionsRequest,
    HeartbeatReply,
    HeartbeatRequest,
    Held,
    Lease,
    LeaseReply,
    LeaseRequest,
    Message,
)
from worker_hooks.task.result import ResultManifest

M = TypeVar("M", bound=Message)


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
    """One process of simulated workers: lease round trips (s), completions, errors."""
    return asyncio.run(_simulate_async(load))


async def _simulate_async(load: _Load) -> tuple[list[float], int, int]:
    # The workers of a process are coroutines on one event loop, each on its own
    # keep-alive connection: threads would measure their own wait for the GIL.
    headers = {
        "Authorization": f"Bearer {load.token}",
        "Content-Type": "application/json",
        VERSION_HEADER: str(PROTOCOL_VERSION),
    }
    rtts: list[float] = []
    counts = {"done": 0, "errors": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + load.duration_s
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(path: str, body: Message, answer: type[M]) -> M:
            async with session.post(load.url + path, data=body.to_json(), headers=headers) as r:
                data = await r.read()
                if r.status != 200:
                    raise StagerError(f"{path}: HTTP {r.status}")
                return answer.from_json(data)

        async def timed(path: str, body: Message, answer: type[M]) -> M | None:
            started = loop.time()
            try:
                reply = await call(path, body, answer)
            except (StagerError, aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1
                await asyncio.sleep(0.1)
                return None
            rtts.append(loop.time() - started)
            return reply

        async def worker(worker_id: str) -> None:
            jitter = random.Random(worker_id)
            await asyncio.sleep(jitter.uniform(0, load.task_s))  # start one by one
            next_beat = loop.time() + load.heartbeat_s
            lease: Lease | None = None
            while loop.time() < deadline:
                if lease is None:  # idle: ask on its own
                    asked = await timed("/v1/lease", LeaseRequest(worker_id, 1), LeaseReply)
                    lease = only(asked.leases) if asked else None
                    if lease is None:
                        await asyncio.sleep(0.05)
                        continue
                await asyncio.sleep(load.task_s * jitter.uniform(0.5, 1.5))  # tasks differ
                if loop.time() > next_beat:
                    held = (Held(lease.task_id, lease.attempt),)
                    beat = HeartbeatRequest(worker_id, held)
                    await call("/v1/heartbeat", beat, HeartbeatReply)
                    next_beat = loop.time() + load.heartbeat_s
                # As a worker does: the completion's request leases the task for the
                # slot it frees.
                completion = Completion(lease.task_id, lease.attempt, _result(lease))
                request = CompletionsRequest(worker_id, (completion,), want=1)
                done = await timed("/v1/completions", request, CompletionsReply)
                counts["done"] += done is not None
                lease = only(done.leases) if done else None

        await asyncio.gather(*(worker(w) for w in load.worker_ids))
    return rtts, counts["done"], counts["errors"]


def only(leases: Sequence[Lease]) -> Lease | None:
    return leases[0] if leases else None


def _result(lease: Lease) -> ResultManifest:
    return ResultManifest(
        task_id=lease.task_id,
        task_key="simulated",
        command=lease.spec.command,
        exit_code=0,
        host="simulated",
        started_at="2026-01-01T00:00:00Z",
    )


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
