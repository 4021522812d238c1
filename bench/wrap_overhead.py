"""The job wrapper's fixed overhead per task, and where the time goes.

Usage:  .venv/bin/python bench/wrap_overhead.py [--tasks 50]

Against the embedded server: one 1 KiB input (cache warm after the first
task); the command is ``true`` followed by a shell builtin writing the 5-byte
output. Each task differs by one environment variable so that none is
memoized. Reported: the median wall time of ``wrap_task`` in this process,
the median of each phase, and the same command run bare (``subprocess``)
for comparison, plus one ``stager wrap`` process end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fsd.cache import NodeCache
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from worker_hooks.task.parse import parse_spec
from worker_hooks.wrap.node import Node
from worker_hooks.wrap.wrapper import wrap_task

BUCKET = "bench-wrap"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stager-bench-") as scratch:
        root = Path(scratch)
        with LocalS3Server(root / "s3") as server:
            settings = server.settings(state_dir=root / "state", progress=False)
            with ObjectStore(settings, credentials=server.credentials) as store:
                store.ensure_bucket(BUCKET)
                store.put_bytes(S3Url(BUCKET, "in/small.txt"), b"x" * 1024)
                node = Node(
                    cache=NodeCache(root / "cache", quota_bytes=1 << 30),
                    store=store,
                    sandbox_dir=root / "sandboxes",
                )
                walls: list[float] = []
                phases: dict[str, list[float]] = {}
                for n in range(args.tasks + 1):
                    spec = parse_spec(
                        {
                            "id": f"t{n}",
                            "command": "true; echo done > out.txt",
                            "shell": True,
                            "env": {"N": str(n)},
                            "inputs": [{"source": f"s3://{BUCKET}/in/small.txt", "path": "in"}],
                            "outputs": [{"path": "out.txt", "to": f"s3://{BUCKET}/out/{n}.txt"}],
                        }
                    )
                    started = time.perf_counter()
                    result = wrap_task(spec, node)
                    if n == 0:
                        continue  # the cold one
                    walls.append(time.perf_counter() - started)
                    for name, seconds in result.manifest.timings_s.items():
                        phases.setdefault(name, []).append(seconds)
                bare = []
                for _ in range(args.tasks):
                    started = time.perf_counter()
                    subprocess.run(["/bin/sh", "-c", "true; echo done > /dev/null"], check=True)
                    bare.append(time.perf_counter() - started)
                spec_path = root / "task.json"
                spec_path.write_text(
                    json.dumps(
                        {"id": "cli", "command": ["true"], "results": f"s3://{BUCKET}/results/"}
                    )
                )
                env = {
                    **os.environ,
                    **server.env(),
                    "STAGER_CACHE_DIR": str(root / "cache"),
                    "STAGER_SANDBOX_DIR": str(root / "sandboxes"),
                    "STAGER_STATE_DIR": str(root / "state"),
                }
                started = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "stager", "wrap", "--force", "--spec", str(spec_path)],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                process_s = time.perf_counter() - started

    ms = 1000
    print(f"tasks: {args.tasks} (cache warm), command `true`, 1 KiB input, 5 B output")
    print(f"wrap_task median: {statistics.median(walls) * ms:.1f} ms")
    for name, values in phases.items():
        print(f"  {name:<10} median {statistics.median(values) * ms:.1f} ms")
    print(f"bare command (fork+exec sh) median: {statistics.median(bare) * ms:.1f} ms")
    print(f"one `stager wrap` process end to end: {process_s * ms:.0f} ms")


if __name__ == "__main__":
    main()
