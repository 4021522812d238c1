"""Dispatch throughput: tasks/s through dispatcher + workers, next to the raw spawn rate.

Usage:  .venv/bin/python bench/dispatch_rate.py [--tasks 5000] [--workers 2] [--slots 1]

Against the embedded S3 server, with the dispatcher and workers as real
processes (LocalCluster): submit N tasks whose command is ``true`` (each
still goes through the whole wrapper: memo check, sandbox, logs and result
manifest to S3), time from submission to the last completion. In the same
run, the raw process-spawn rate: ``true`` started by subprocess in a loop.
Also the lease round trip (a lease request that finds no work), median and
p99.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from stager.s3server import LocalS3Server
from worker_hooks.localcluster import LocalCluster
from worker_hooks.taskdb import FINAL_STATES


def spawn_rate(seconds: float = 5.0) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        subprocess.run(["true"], check=True)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    raw = spawn_rate()
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        root = Path(scratch)
        with LocalS3Server(root / "s3") as server:
            server.client().create_bucket(Bucket="bench-dispatch")
            env = {**server.env(), "STAGER_STATE_DIR": str(root / "state")}
            with LocalCluster(root / "cluster", env, policy="fifo") as cluster:
                names = [f"w{n}" for n in range(args.workers)]
                for name in names:
                    cluster.add_worker(name, "--slots", str(args.slots))
                cluster.wait_for_workers(names)
                rtts = []
                for _ in range(200):
                    started = time.perf_counter()
                    cluster.client.lease("probe", 1, wait_s=0)
                    rtts.append(time.perf_counter() - started)
                tasks = [
                    {
                        "id": f"t{n}",
                        "command": ["true"],
                        "env": {"N": str(n)},
                        "results": "s3://bench-dispatch/results/",
                    }
                    for n in range(args.tasks)
                ]
                started = time.perf_counter()
                cluster.client.submit(tasks, workflow="bench")
                submit_s = time.perf_counter() - started
                while True:
                    counts = cluster.client.status("bench")["counts"]
                    if sum(counts[s] for s in FINAL_STATES) >= args.tasks:
                        break
                    time.sleep(0.2)
                total_s = time.perf_counter() - started
    rate = counts["done"] / total_s
    rtts.sort()
    print(f"raw spawn rate (subprocess.run true): {raw:.0f} /s")
    print(
        f"dispatch: {counts['done']} of {args.tasks} tasks done in {total_s:.1f} s "
        f"({args.workers} workers x {args.slots} slots): {rate:.1f} tasks/s, "
        f"{rate / raw:.1%} of the raw spawn rate; submit took {submit_s:.2f} s"
    )
    print(
        f"lease round trip (no work): median {statistics.median(rtts) * 1000:.2f} ms, "
        f"p99 {rtts[int(len(rtts) * 0.99) - 1] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
