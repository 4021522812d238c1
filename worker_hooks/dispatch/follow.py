"""Following a workflow until every task has ended (``stager submit --wait``, the demo)."""

from __future__ import annotations

import time

from tqdm import tqdm

from stager.errors import TaskError
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.task.protocol import StatusReply, TaskState


def wait_for_workflow(client: DispatcherClient, name: str, *, poll_s: float = 1.0) -> StatusReply:
    """Poll until every task of workflow ``name`` has ended; raise TaskError unless all are done.

    The total is the workflow's own count, so tasks submitted under the same
    name earlier (or later, while waiting) are waited for and judged too.
    """
    with tqdm(unit="task", desc=name, disable=None) as bar:
        while True:
            status = client.status(name)
            total = sum(status.counts.values())
            ended = sum(status.count(state) for state in TaskState if state.final)
            bar.total = total
            bar.update(ended - bar.n)
            bar.set_postfix(
                running=status.count(TaskState.LEASED), failed=status.count(TaskState.FAILED)
            )
            if ended >= total:
                break
            time.sleep(poll_s)
    if status.count(TaskState.DONE) != total:
        raise TaskError(
            f"workflow {name}: {status.count(TaskState.FAILED)} failed, "
            f"{status.count(TaskState.CANCELLED)} cancelled of {total} tasks",
            hint="see `stager status` and the failed tasks' stderr logs",
        )
    return status
