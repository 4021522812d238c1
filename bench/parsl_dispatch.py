"""The Parsl side of ``stager bench dispatch``: N shell commands through Parsl's
HighThroughputExecutor on this machine.

Run by the peer tools' interpreter (``.venv-bench``, where Parsl is installed),
not imported by stager: ``python parsl_dispatch.py SHAPE TASKS WORKERS RUN_DIR``.
One block from a LocalProvider with WORKERS workers (as many task slots as
stager's workers have between them), each task a ``bash_app``: ``true``
(shape ``true``), or ``cp`` of a 1 KiB file made beforehand on local disk to
another (shape ``io``). The clock starts once one task has run (the block
and its workers are up: stager's side also starts once its workers are
registered) and stops when the last future is done. Prints one line of
JSON: tasks, seconds, tasks/s, and the CPU time per task of this process
and every process it started (interchange, worker pool, workers).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import parsl
from parsl.app.app import bash_app
from parsl.config import Config
from parsl.data_provider.files import File
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

IO_BYTES = 1024


@bash_app
def true_command() -> str:
    return "true"


@bash_app
def copy_command(inputs: Any = (), outputs: Any = ()) -> str:
    return f"cp {inputs[0].filepath} {outputs[0].filepath}"


def _family_cpu_s() -> float:
    """CPU seconds of this process and all its descendants alive now."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    family, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sum(times.get(pid, 0.0) for pid in family)


def main(shape: str, tasks: int, workers: int, run_dir: str) -> dict[str, float]:
    executor = HighThroughputExecutor(
        label="htex",
        max_workers_per_node=workers,
        cores_per_worker=1e-6,  # as many workers as asked, whatever the core count
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),  # type: ignore[no-untyped-call]
    )
    config = Config(
        executors=[executor], run_dir=run_dir, initialize_logging=False, usage_tracking=0
    )
    files = Path(run_dir) / "files"
    files.mkdir(parents=True, exist_ok=True)
    if shape == "io":
        for n in range(tasks):
            (files / f"in-{n}.dat").write_bytes(n.to_bytes(8, "big") * (IO_BYTES // 8))
    with parsl.load(config):
        true_command().result()  # the block and its workers are up
        before = _family_cpu_s()
        started = time.perf_counter()
        if shape == "io":
            futures = [
                copy_command(
                    inputs=[File(str(files / f"in-{n}.dat"))],
                    outputs=[File(str(files / f"out-{n}.dat"))],
                )
                for n in range(tasks)
            ]
        else:
            futures = [true_command() for _ in range(tasks)]
        failed = sum(future.exception() is not None for future in futures)
        seconds = time.perf_counter() - started
        cpu_s = _family_cpu_s() - before
    return {
        "tasks": tasks,
        "failed": failed,
        "seconds": seconds,
        "tasks_per_s": tasks / seconds,
        "cpu_ms_per_task": cpu_s * 1000 / tasks,
    }


if __name__ == "__main__":
    shape, tasks, workers, run_dir = sys.argv[1:5]
    print(json.dumps(main(shape, int(tasks), int(workers), run_dir)))
