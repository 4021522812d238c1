"""Group commit: many threads' small changes under one hold of a lock.

Threads hand in items; the first to arrive while no commit runs becomes the
leader, takes every item pending at that moment (its own included) and
commits them as one batch; the others wait for their own outcome. Items that
arrive during a commit form the next batch, led by one of their threads.
Under contention a batch grows with the queue, so a lock that every item
would otherwise take once is taken once per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

# Commits a batch; returns one outcome per item, in order (an exception
# instance is that item's failure). Raising fails every item of the batch.
Commit = Callable[[Sequence[Item]], Sequence["Outcome | BaseException"]]


@dataclass
class _Slot(Generic[Item, Outcome]):
    item: Item
    outcome: Outcome | BaseException | None = None
    done: bool = False


@dataclass
class GroupCommit(Generic[Item, Outcome]):
    commit: Commit[Item, Outcome]
    _pending: list[_Slot[Item, Outcome]] = field(default_factory=list)
    _leading: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def submit(self, item: Item) -> Outcome:
        """Commit ``item`` (in some batch) and return its outcome, or raise its failure."""
        slot: _Slot[Item, Outcome] = _Slot(item)
        with self._changed:
            self._pending.append(slot)
            while self._leading and not slot.done:
                self._changed.wait()
            if not slot.done:
                self._leading = True
                batch, self._pending = self._pending, []
        if not slot.done:
            self._lead(batch)
        if isinstance(slot.outcome, BaseException):
            raise slot.outcome
        return slot.outcome  # type: ignore[return-value]  # done: an Outcome

    def _lead(self, batch: list[_Slot[Item, Outcome]]) -> None:
        outcomes: Sequence[Outcome | BaseException]
        try:
            outcomes = self.commit([slot.item for slot in batch])
        except BaseException as exc:  # every item of the batch shares the failure
            outcomes = [exc] * len(batch)
        with self._changed:
            for slot, outcome in zip(batch, outcomes, strict=True):
                slot.outcome, slot.done = outcome, True
            self._leading = False
            self._changed.notify_all()
