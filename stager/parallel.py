"""Run one function over many items on a bounded thread pool, failing fast.

The first exception cancels every item not yet started and is re-raised once
the running ones have finished; results come back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_all(function: Callable[[T], R], items: Sequence[T], *, workers: int) -> list[R]:
    if not items:
        return []
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
