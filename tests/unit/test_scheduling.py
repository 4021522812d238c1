"""Scheduling policies: which queued tasks a worker gets."""

from __future__ import annotations

import pytest

from stager.digest import Digest
from stager.settings import member_of
from worker_hooks.dispatch.scheduling import Candidate, Policy, choose_tasks

A, B = "worker-a", "worker-b"
REF_A, REF_B = Digest.parse("xxh3-128:" + "a" * 32), Digest.parse("xxh3-128:" + "b" * 32)
TASKS = [
    Candidate("needs-b", 1, 100.0, ((REF_B, 1000),)),
    Candidate("needs-nothing-known", 2, 100.0, ()),
    Candidate("needs-a", 3, 100.0, ((REF_A, 1000),)),
]
HOLDERS = {REF_A: frozenset({A}), REF_B: frozenset({B})}


def choose(policy: str, worker: str = A, now: float = 101.0, count: int = 3) -> list[str]:
    return choose_tasks(
        TASKS,
        worker=worker,
        holders=HOLDERS,
        policy=Policy(policy),
        count=count,
        now=now,
        starvation_s=60,
    )


def test_fifo_ignores_data() -> None:
    assert choose("fifo", count=2) == ["needs-b", "needs-nothing-known"]


@pytest.mark.parametrize("policy", list(Policy))
def test_a_deeper_task_goes_first_where_the_policy_leaves_a_choice(policy: Policy) -> None:
    shallow = Candidate("map", 1, 100.0)
    deep = Candidate("reduce", 2, 100.0, depth=1)
    chosen = choose_tasks(
        [shallow, deep],
        worker=A,
        holders={},
        policy=policy,
        count=2,
        now=101.0,
        starvation_s=60,
    )
    assert chosen == ["reduce", "map"]


def test_max_cache_hit_keeps_tasks_for_the_worker_holding_their_data() -> None:
    assert choose("max-cache-hit") == ["needs-a", "needs-nothing-known"]
    assert choose("max-cache-hit", worker=B) == ["needs-b", "needs-nothing-known"]


def test_good_cache_compute_prefers_hits_but_never_idles() -> None:
    assert choose("good-cache-compute") == ["needs-a", "needs-nothing-known", "needs-b"]


@pytest.mark.parametrize("policy", ["max-cache-hit", "good-cache-compute"])
def test_starvation_is_bounded(policy: str) -> None:
    # Past starvation_s every task is eligible and goes in submission order.
    assert choose(policy, now=100.0 + 60, count=1) == ["needs-b"]


def test_unknown_policy_is_refused_when_the_setting_is_read() -> None:
    with pytest.raises(ValueError, match="fifo, max-cache-hit, good-cache-compute"):
        member_of(Policy)("random")
    assert member_of(Policy)(" Max-Cache-Hit ") is Policy.MAX_CACHE_HIT
