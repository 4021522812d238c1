"""Following a workflow until every task has ended (``stager submit --wait``, the demo).

On a terminal a progress bar; elsewhere (a batch job, CI) a line whenever
the counts change, at most every ``LINE_EVERY_S``; a summary at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from stager.errors import TaskError
from stager.units import format_size
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.task.protocol import StatusReply, TaskState

LINE_EVERY_S = 10.0


def progress_line(name: str, status: StatusReply) -> str:
    total = sum(status.counts.values())
    ended = sum(status.count(state) for state in TaskState if state.final)
    return (
        f"workflow {name}: {ended}/{total} ended ({status.count(TaskState.DONE)} done, "
        f"{status.count(TaskState.FAILED)} failed), {status.count(TaskState.LEASED)} running, "
        f"{status.count(TaskState.QUEUED)} queued, {status.count(TaskState.WAITING)} waiting"
    )


def summary_line(name: str, status: StatusReply) -> str:
    span = f"{status.span_s:.1f} s" if status.span_s is not None else "-"
    return (
        f"workflow {name}: {status.count(TaskState.DONE)} done, "
        f"{status.count(TaskState.FAILED)} failed, {status.count(TaskState.CANCELLED)} "
        f"cancelled; {status.memo_hits} found done before (memo); inputs "
        f"{format_size(status.bytes_from_s3)} from S3, {format_size(status.bytes_from_cache)} "
        f"from node caches; makespan {span}"
    )


def wait_for_workflow(
    client: DispatcherClient,
    name: str,
    *,
    poll_s: float = 1.0,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> StatusReply:
    """Poll until every task of workflow ``name`` has ended; raise TaskError unless all are done.

    The total is the workflow's own count, so tasks submitted under the same
    name earlier (or later, while waiting) are waited for and judged too.
    """
    last_line, last_at = "", 0.0
    with tqdm(unit="task", desc=name, disable=None) as bar:
        while True:
            status = client.status(name)
            total = sum(status.counts.values())
            ended = sum(status.count(state) for state in TaskState if state.final)
            if bar.disable:
                line = progress_line(name, status)
                if line != last_line and time.monotonic() - last_at >= LINE_EVERY_S:
                    echo(line)
                    last_line, last_at = line, time.monotonic()
            else:
                bar.total = total
                bar.update(ended - bar.n)
                bar.set_postfix(
                    running=status.count(TaskState.LEASED), failed=status.count(TaskState.FAILED)
                )
            if ended >= total:
                break
            time.sleep(poll_s)
    echo(summary_line(name, status))
    if status.count(TaskState.DONE) != total:
        raise TaskError(
            f"workflow {name}: {status.count(TaskState.FAILED)} failed, "
            f"{status.count(TaskState.CANCELLED)} cancelled of {total} tasks",
            hint=f"`stager status {name}` says why; `stager logs TASK` shows a task's logs",
        )
    return status
