"""Which queued tasks a worker gets when it asks: pure functions, no I/O.

The policies are Falkon's data-diffusion ones, in a pull model (the worker
asks; the dispatcher chooses among the queued tasks for it):

- ``fifo``: deepest first, then submission order; data ignored.
- ``max-cache-hit``: a worker gets the tasks whose input bytes it holds,
  most bytes first; a task whose inputs another live worker holds is kept
  for that worker; tasks nobody holds go to anyone. A worker may idle while
  work waits for another.
- ``good-cache-compute``: cache hits first, then tasks nobody holds, then
  tasks another worker holds: no worker idles while work is queued.

Where a policy leaves a choice, a task further down its workflow (larger
``depth``: its producers have finished) goes before one further up, and
then submission order: a reduce runs as soon as its maps are done, so the
intermediates it reads (``local`` ones live on a node that may die) are
consumed early, and final outputs appear early, instead of after every map.

Starvation is bounded: a task queued for ``starvation_s`` or longer goes
first, to whichever worker asks, under the policies that look at data.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stager.digest import Digest


class Policy(enum.Enum):
    FIFO = "fifo"
    MAX_CACHE_HIT = "max-cache-hit"
    GOOD_CACHE_COMPUTE = "good-cache-compute"


@dataclass(frozen=True)
class Candidate:
    """A queued task as the scheduler sees it."""

    task_id: str
    seq: int
    queued_at: float
    inputs: tuple[tuple[Digest, int], ...] = ()  # (digest, size) of inputs with known digests
    depth: int = 0  # 0: no producers; else one more than its deepest producer

    @property
    def order(self) -> tuple[int, int]:
        """Deepest first, then submission order."""
        return (-self.depth, self.seq)


@dataclass(frozen=True)
class _Scored:
    candidate: Candidate
    starving: bool
    hit_bytes: int
    held_elsewhere: bool


def _score(
    candidate: Candidate,
    worker: str,
    holders: Mapping[Digest, frozenset[str]],
    now: float,
    starvation_s: float,
) -> _Scored:
    hit = 0
    elsewhere = False
    for digest, size in candidate.inputs:
        held_by = holders.get(digest, frozenset())
        if worker in held_by:
            hit += size
        elif held_by:
            elsewhere = True
    starving = now - candidate.queued_at >= starvation_s
    return _Scored(candidate, starving, hit, elsewhere and not hit)


def _order(scored: _Scored) -> tuple[int, int, int, tuple[int, int]]:
    """Starving tasks oldest first; then most hit bytes, unheld before held elsewhere."""
    if scored.starving:
        return (0, scored.candidate.seq, 0, (0, 0))
    return (1, -scored.hit_bytes, int(scored.held_elsewhere), scored.candidate.order)


def choose_tasks(
    candidates: Sequence[Candidate],
    *,
    worker: str,
    holders: Mapping[Digest, frozenset[str]],
    policy: Policy,
    count: int,
    now: float,
    starvation_s: float,
) -> list[str]:
    """Up to ``count`` task ids for ``worker``, best first.

    ``holders`` maps a digest to the live workers whose caches hold it.
    """
    if policy is Policy.FIFO:
        ordered = sorted(candidates, key=lambda c: c.order)
        return [c.task_id for c in ordered[:count]]
    scored = [_score(c, worker, holders, now, starvation_s) for c in candidates]
    if policy is Policy.MAX_CACHE_HIT:
        scored = [s for s in scored if s.starving or not s.held_elsewhere]
    scored.sort(key=_order)
    return [s.candidate.task_id for s in scored[:count]]
