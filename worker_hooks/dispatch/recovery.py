"""What a lost node took with it, and what must run again: a pure plan.

When a worker is found lost (silent past its lease, or named by ``stager
recover``), its replicas leave the catalog; then every output that was
only on nodes (not in S3) and that the lost node held is one of:

- **safe**: another live node holds it (for a ``mirror`` output, that node
  also writes it behind to S3: it is listed as ``from_mirror``);
- **dropped**: no copy is left and nothing needs it any more (every task
  that reads it has ended);
- **recomputed**: no copy is left and a task that has not succeeded reads
  it, or no task reads it at all (a final output): its producer runs again.
  A producer whose own inputs were lost too brings its producers along,
  recursively.

Every task that has not succeeded (nor been cancelled) and depends on a
task that runs again, directly or through others, goes back to waiting for
it (``reset``). That includes tasks that *failed*: a dependant that ran
while the node was silent but not yet found lost failed to find its input,
and its own dependants failed with it; they get their chance again. So does
the template of a member that runs again (worker_hooks.task.mapping), done or
not: it gathers its members' outputs anew.
:func:`plan_recovery` decides from a :class:`CatalogView`;
:class:`~worker_hooks.dispatch.taskdb.TaskDB` gathers the view and applies
the plan in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from stager.digest import Digest
from worker_hooks.task.result import Persist


@dataclass(frozen=True)
class AtRisk:
    """An output, not in S3, that the lost node held."""

    task: str
    digest: Digest
    kept: Persist
    size: int


class CatalogView(Protocol):
    def available(self, digest: Digest) -> bool:
        """In S3, on a live node, or not a task's output at all (an S3 input)."""

    def consumers(self, digest: Digest) -> Sequence[str]:
        """Tasks that read ``digest`` and have not succeeded (nor been cancelled)."""

    def ever_consumed(self, digest: Digest) -> bool: ...

    def producer_of(self, digest: Digest) -> str | None: ...

    def inputs_of(self, task: str) -> Sequence[Digest]: ...

    def dependants(self, task: str) -> Sequence[str]:
        """Tasks that take an output of ``task`` and have not succeeded (nor been cancelled)."""


@dataclass(frozen=True)
class RecoveryPlan:
    safe: tuple[AtRisk, ...] = ()
    from_mirror: tuple[AtRisk, ...] = ()
    dropped: tuple[AtRisk, ...] = ()
    rerun: tuple[str, ...] = ()  # producers to run again, in the order found
    reset: tuple[str, ...] = ()  # pending dependants that wait for them again


def plan_recovery(at_risk: Sequence[AtRisk], view: CatalogView) -> RecoveryPlan:
    safe: list[AtRisk] = []
    from_mirror: list[AtRisk] = []
    dropped: list[AtRisk] = []
    todo: list[str] = []
    for output in at_risk:
        if view.available(output.digest):
            (from_mirror if output.kept is Persist.MIRROR else safe).append(output)
        elif view.consumers(output.digest) or not view.ever_consumed(output.digest):
            todo.append(output.task)
        else:
            dropped.append(output)
    rerun: list[str] = []
    while todo:
        task = todo.pop(0)
        if task in rerun:
            continue
        rerun.append(task)
        for digest in view.inputs_of(task):
            producer = view.producer_of(digest)
            if producer is not None and not view.available(digest):
                todo.append(producer)
    reset: set[str] = set()
    frontier = list(rerun)
    while frontier:
        for dependant in view.dependants(frontier.pop()):
            if dependant not in reset and dependant not in rerun:
                reset.add(dependant)
                frontier.append(dependant)
    return RecoveryPlan(
        tuple(safe), tuple(from_mirror), tuple(dropped), tuple(rerun), tuple(sorted(reset))
    )
