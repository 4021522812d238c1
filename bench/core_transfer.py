"""Push and pull throughput of the stager CLI against the embedded server.

Usage:  .venv/bin/python bench/core_transfer.py [--large-mib 1024] [--small-count 1000]

Starts SeaweedFS on loopback, generates two workloads (one large file; many
64 KiB files), and times `stager push` and `stager pull` as separate
processes under /usr/bin/time -v, reporting MB/s and each process's peak
RSS. Every pulled file is compared with its source. This is a first probe
of the core; the side-by-side comparison with other tools is bench's job.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stager.s3server import LocalS3Server

MiB = 1024 * 1024


def timed(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a stager command; return (seconds, peak RSS in KiB)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "stager", "--no-progress", *args]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return seconds, int(peak.group(1)) if peak else -1


def make_workloads(root: Path, large_mib: int, small_count: int) -> dict[str, Path]:
    large = root / "large"
    large.mkdir(parents=True)
    with (large / "one.bin").open("wb") as out:
        for _ in range(large_mib):
            out.write(os.urandom(MiB))
    small = root / "small"
    small.mkdir()
    for index in range(small_count):
        (small / f"f{index:05d}.bin").write_bytes(os.urandom(64 * 1024))
    return {"large": large, "small": small}


def same_tree(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--small-count", type=int, default=1000)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stager-bench-"))
    try:
        workloads = make_workloads(root / "src", options.large_mib, options.small_count)
        with LocalS3Server(root / "s3") as server:
            server.client().create_bucket(Bucket="bench")
            env = {**os.environ, **server.env(), "STAGER_STATE_DIR": str(root / "state")}
            print("| workload | bytes | push MB/s | push peak RSS | pull MB/s | pull peak RSS |")
            print("|---|---|---|---|---|---|")
            for name, source in workloads.items():
                size = sum(p.stat().st_size for p in source.iterdir())
                push_s, push_kib = timed(["push", str(source), "--to", f"s3://bench/{name}/"], env)
                dest = root / "dest" / name
                pull_s, pull_kib = timed(["pull", f"s3://bench/{name}/{name}/", str(dest)], env)
                if not same_tree(source, dest):
                    raise SystemExit(f"{name}: pulled files differ from the sources")
                print(
                    f"| {name} ({len(list(source.iterdir()))} files) | {size / MiB:.0f} MiB | "
                    f"{size / push_s / 1e6:.1f} | {push_kib / 1024:.0f} MiB | "
                    f"{size / pull_s / 1e6:.1f} | {pull_kib / 1024:.0f} MiB |"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
