"""How many tasks a worker asks the dispatcher for, and when: pure decisions.

A worker holds up to ``slots + ahead`` leases: the tasks running and those
waiting for a slot (their inputs prefetched meanwhile). A task whose
command has ended holds no slot while its outputs are staged out. ``ahead`` is the
prefetch setting, or :data:`SHORT_AHEAD` per slot while tasks take under
:data:`SHORT_TASK_S` on average: then a round trip per task would cost more
than the task.

Two requests lease. Completions ask for the slots they free, in their own
round trip (it is made anyway). The lease loop asks only when no
completion is about to be made or sent (or one has waited :data:`REPORT_WAIT_S`:
its segment write may hang, and the slots must not wait for it), and,
while tasks are leased ahead of the slots, only once half of those have
started: one request brings several. Short tasks are many to a batch of
completions, so for them the lease loop does not wait for the batch (the
slots would run dry meanwhile); the refill rule alone holds.

Completions are sent in batches: the oldest waits for company up to
:meth:`Holding.report_window_s`.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT_TASK_S = 0.05
SHORT_AHEAD = 8
REPORT_WAIT_S = 0.25
BATCH_WINDOW_S = 0.02  # how long a completion waits for others to share its request
BUSY_BATCH_WINDOW_S = 0.1  # the same, while short tasks keep coming


@dataclass(frozen=True)
class Holding:
    """What a worker holds and has asked for, at one moment."""

    slots: int
    prefetch: int
    held: int  # leases in hand, running or waiting for a slot
    staging_out: int = 0  # leases in hand whose command has ended (outputs on their way)
    asking: int = 0  # tasks asked for by a request still in flight
    unreported: int = 0  # completions not sent yet
    unreported_for_s: float = 0.0  # how long the oldest of them has waited
    task_s: float | None = None  # how long tasks take here (a moving average)
    draining: bool = False

    @property
    def short(self) -> bool:
        """Whether tasks take under :data:`SHORT_TASK_S` here, on average."""
        return self.task_s is not None and self.task_s < SHORT_TASK_S

    @property
    def ahead(self) -> int:
        """Tasks to hold beyond the slots."""
        if self.short:
            return max(self.prefetch, SHORT_AHEAD * self.slots)
        return self.prefetch

    def wanted(self) -> int:
        """Tasks to ask for with the next completions: what the depth lacks."""
        if self.draining:
            return 0
        return max(0, self.slots + self.ahead - self.held - self.asking)

    def report_window_s(self) -> float:
        """How long the oldest completion waits for others to share its batch.

        Each batch costs a result segment (an S3 write) and a round trip. While
        short tasks are held, more completions come within a task's time: a
        longer wait then makes a batch of several, and the slots do not wait
        for it. Otherwise a completion waits only briefly; and once nothing is
        held, not at all (the reporter checks).
        """
        return BUSY_BATCH_WINDOW_S if self.short and self.held else BATCH_WINDOW_S

    def to_lease(self) -> int:
        """Tasks the lease loop asks for now (0: wait)."""
        # Short tasks are many to a completions batch: the slots would run dry waiting
        # for it, so the refill rule alone holds for them.
        waiting = self.unreported or self.staging_out  # completions to come
        if waiting and self.unreported_for_s < REPORT_WAIT_S and not self.short:
            return 0
        if self.held and self.held - self.slots > self.ahead // 2:
            return 0
        return self.wanted()
