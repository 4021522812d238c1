"""``stager bench dispatch``: tasks/s through dispatcher + workers, next to the raw spawn rate.

Against the embedded S3 server, with the dispatcher and workers as real
processes (LocalCluster): submit N tasks whose command is ``true`` (each
still goes through the whole wrapper: memo check, sandbox, logs and result
manifest to S3), time from submission to the last completion. In the same
run, the raw process-spawn rate: ``true`` started by subprocess in a loop.
Also the lease round trip (a lease request that finds no work), median and
p99.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stager.s3server import LocalS3Server
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.protocol import TaskState


def spawn_rate(seconds: float = 5.0) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        subprocess.run(["true"], check=True)
        count += 1
    return count / (time.perf_counter() - started)


@dataclass(frozen=True)
class DispatchFigures:
    tasks: int
    done: int
    workers: int
    slots: int
    seconds: float
    tasks_per_s: float
    raw_spawns_per_s: float
    share_of_raw: float
    submit_s: float
    lease_rtt_median_ms: float
    lease_rtt_p99_ms: float


def run_dispatch_bench(work: Path, *, tasks: int, workers: int, slots: int) -> DispatchFigures:
    raw = spawn_rate()
    with LocalS3Server(work / "s3") as server:
        server.client().create_bucket(Bucket="bench-dispatch")
        env = {**server.env(), "STAGER_STATE_DIR": str(work / "state")}
        with LocalCluster(work / "cluster", env, policy=Policy.FIFO) as cluster:
            names = [f"w{n}" for n in range(workers)]
            for name in names:
                cluster.add_worker(name, "--slots", str(slots))
            cluster.wait_for_workers(names)
            rtts = []
            for _ in range(200):
                started = time.perf_counter()
                cluster.client.lease("probe", 1, wait_s=0)
                rtts.append(time.perf_counter() - started)
            bodies = [
                parse_spec(
                    {
                        "id": f"t{n}",
                        "command": ["true"],
                        "env": {"N": str(n)},
                        "results": "s3://bench-dispatch/results/",
                    }
                )
                for n in range(tasks)
            ]
            started = time.perf_counter()
            cluster.client.submit(bodies, workflow="bench")
            submit_s = time.perf_counter() - started
            while True:
                status = cluster.client.status("bench")
                if sum(status.count(s) for s in TaskState if s.final) >= tasks:
                    break
                time.sleep(0.2)
            total_s = time.perf_counter() - started
    done = status.count(TaskState.DONE)
    rate = done / total_s
    rtts.sort()
    return DispatchFigures(
        tasks=tasks,
        done=done,
        workers=workers,
        slots=slots,
        seconds=round(total_s, 2),
        tasks_per_s=round(rate, 1),
        raw_spawns_per_s=round(raw, 1),
        share_of_raw=round(rate / raw, 4),
        submit_s=round(submit_s, 3),
        lease_rtt_median_ms=round(statistics.median(rtts) * 1000, 3),
        lease_rtt_p99_ms=round(rtts[int(len(rtts) * 0.99) - 1] * 1000, 3),
    )
