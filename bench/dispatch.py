"""``stager bench dispatch``: tasks/s through dispatcher + workers, next to the raw spawn rate.

Against the embedded S3 server, with the dispatcher and workers as real
processes (LocalCluster): submit N tasks whose command is ``true`` (each
still goes through the whole wrapper: memo check, sandbox, logs and result
manifest to S3), time from submission to the last completion. In the same
run, the raw process-spawn rate: ``true`` started by subprocess in a loop.
Also the lease round trip (a lease request that finds no work), median and
p99. And, side by side, the same number of ``true`` commands through Parsl's
HighThroughputExecutor with as many workers as stager has task slots
(bench/parsl_dispatch.py, run by the peer tools' interpreter, where Parsl is
installed; skipped, and said so, where it is not).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.peers import peer_bin_dir
from stager.errors import StagerError
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
    parsl_tasks_per_s: float | None  # None: Parsl is not installed with the peer tools
    parsl_seconds: float | None

    @property
    def over_parsl(self) -> float | None:
        """stager's tasks/s over Parsl's (above 1: stager is faster)."""
        if not self.parsl_tasks_per_s:
            return None
        return round(self.tasks_per_s / self.parsl_tasks_per_s, 3)


def run_parsl(work: Path, *, tasks: int, workers: int) -> tuple[float, float] | None:
    """Parsl's (tasks/s, seconds) for ``tasks`` ``true`` commands on ``workers`` workers;
    None where the peer tools' interpreter has no Parsl."""
    python = peer_bin_dir() / "python"
    has_parsl = python.exists() and (
        subprocess.run([python, "-c", "import parsl"], capture_output=True, check=False).returncode
        == 0
    )
    if not has_parsl:
        return None
    runner = Path(__file__).with_name("parsl_dispatch.py")
    # Parsl starts its interchange and workers as commands: they live beside that Python.
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [python, runner, str(tasks), str(workers), str(work / "parsl-runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StagerError(f"the Parsl side of the bench failed: {last}")
    figures = json.loads(lines[-1])
    if figures["failed"]:
        raise StagerError(f"the Parsl side of the bench failed {figures['failed']} tasks")
    return float(figures["tasks_per_s"]), float(figures["seconds"])


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
                time.sleep(0.02)  # a coarse poll would add up to its period to the time
            total_s = time.perf_counter() - started
    done = status.count(TaskState.DONE)
    rate = done / total_s
    rtts.sort()
    parsl = run_parsl(work, tasks=tasks, workers=workers * slots)
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
        parsl_tasks_per_s=None if parsl is None else round(parsl[0], 1),
        parsl_seconds=None if parsl is None else round(parsl[1], 2),
    )
