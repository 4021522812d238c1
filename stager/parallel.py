"""Run one function over many items on a bounded thread pool, failing fast.

The first exception cancels every item not yet started and is re-raised once
the running ones have finished; results come back in input order.
:func:`run_in_batches` sends some items through a batch function instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from stager.errors import StagerError

# Objects per batch of reads or writes (stager.movers): bounds the files one batch
# holds open and its requests in the native client's queue.
BATCH_OBJECTS = 128

T = TypeVar("T")
R = TypeVar("R")


def run_all(function: Callable[[T], R], items: Sequence[T], *, workers: int) -> list[R]:
    if len(items) <= 1:  # no pool for one item
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures: list[Future[R]] = [pool.submit(function, item) for item in items]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        failed = [future for future in futures if future in done and future.exception()]
        if failed:
            pool.shutdown(wait=True, cancel_futures=True)
            raise failed[0].exception()  # type: ignore[misc]
        return [future.result() for future in futures]


def run_in_batches(
    items: Sequence[T],
    batchable: Callable[[T], bool],
    batch: Callable[[Sequence[T]], Sequence[R | StagerError]],
    alone: Callable[[T], R],
    *,
    workers: int,
    batch_size: int = BATCH_OBJECTS,
) -> list[R]:
    """Run the ``batchable`` items through ``batch``, ``batch_size`` at a time
    (it gives each item's result or error, in order), and the others through ``alone``
    on a thread pool (failing fast). A batch's first error is raised once everything
    else has run: one bad item does not stop the others. Results in input order."""
    results: dict[int, R] = {}
    errors: list[StagerError] = []
    batched = [batchable(item) for item in items]
    chosen = [n for n, yes in enumerate(batched) if yes]
    for start in range(0, len(chosen), batch_size):
        chunk = chosen[start : start + batch_size]
        for n, outcome in zip(chunk, batch([items[n] for n in chunk]), strict=True):
            if isinstance(outcome, StagerError):
                errors.append(outcome)
            else:
                results[n] = outcome
    rest = [n for n, yes in enumerate(batched) if not yes]
    results.update(
        zip(rest, run_all(alone, [items[n] for n in rest], workers=workers), strict=True)
    )
    if errors:
        raise errors[0]
    return [results[n] for n in range(len(items))]
