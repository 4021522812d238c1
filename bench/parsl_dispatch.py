"""The Parsl side of ``stager bench dispatch``: N shell commands through Parsl's
HighThroughputExecutor on this machine.

Run by the peer tools' interpreter (``.venv-bench``, where Parsl is installed),
not imported by stager: ``python parsl_dispatch.py TASKS WORKERS RUN_DIR``.
One block from a LocalProvider with WORKERS workers (as many task slots as
stager's workers have between them), the command ``true`` as a ``bash_app``.
The clock starts once one task has run (the block and its workers are up:
stager's side also starts once its workers are registered) and stops when
the last future is done. Prints one line of JSON: tasks, seconds, tasks/s.
"""

from __future__ import annotations

import json
import sys
import time

import parsl
from parsl.app.app import bash_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider


@bash_app  # type: ignore[untyped-decorator]
def true_command() -> str:
    return "true"


def main(tasks: int, workers: int, run_dir: str) -> dict[str, float]:
    executor = HighThroughputExecutor(
        label="htex",
        max_workers_per_node=workers,
        cores_per_worker=1e-6,  # as many workers as asked, whatever the core count
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    config = Config(
        executors=[executor], run_dir=run_dir, initialize_logging=False, usage_tracking=0
    )
    with parsl.load(config):
        true_command().result()  # the block and its workers are up
        started = time.perf_counter()
        futures = [true_command() for _ in range(tasks)]
        failed = sum(future.exception() is not None for future in futures)
        seconds = time.perf_counter() - started
    return {"tasks": tasks, "failed": failed, "seconds": seconds, "tasks_per_s": tasks / seconds}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))
