"""Group commit: batches under contention, and every failure reaches its item."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from fsd.groupcommit import GroupCommit


def test_waiting_items_are_committed_together_and_each_gets_its_own_outcome() -> None:
    batches: list[list[int]] = []
    first_batch_running = threading.Event()
    release_first_batch = threading.Event()

    def commit(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if len(batches) == 1:
            first_batch_running.set()
            release_first_batch.wait(10)
        return [item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(commit)
    results: dict[int, int] = {}

    def submit(item: int) -> None:
        results[item] = group.submit(item)

    leader = threading.Thread(target=submit, args=(0,))
    leader.start()
    assert first_batch_running.wait(10)
    followers = [threading.Thread(target=submit, args=(n,)) for n in range(1, 6)]
    for thread in followers:
        thread.start()
    # Let the followers queue up behind the running commit, then let it finish.
    deadline = time.monotonic() + 10
    while len(group._pending) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    release_first_batch.set()
    for thread in [leader, *followers]:
        thread.join(10)
    assert results == {n: n * 10 for n in range(6)}
    assert batches == [[0], [1, 2, 3, 4, 5]]  # five items, one hold of the lock


def test_a_failed_item_raises_in_its_own_thread_only() -> None:
    def commit(items: Sequence[str]) -> list[str | BaseException]:
        return [OSError(f"cannot publish {i}") if i == "bad" else i for i in items]

    group: GroupCommit[str, str] = GroupCommit(commit)
    assert group.submit("good") == "good"
    with pytest.raises(OSError, match="cannot publish bad"):
        group.submit("bad")


def test_a_failed_batch_fails_every_item_and_the_next_batch_still_runs() -> None:
    calls = []

    def commit(items: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("lock file vanished")
        return list(items)

    group: GroupCommit[str, str] = GroupCommit(commit)
    with pytest.raises(RuntimeError, match="lock file vanished"):
        group.submit("a")
    assert group.submit("b") == "b"  # no leader was left stuck
