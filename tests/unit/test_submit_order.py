"""The order in which a batch of tasks can be sent in parts."""

from __future__ import annotations

import pytest

from stager.errors import ConfigError
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.spec import TaskSpec
from worker_hooks.task.workflow import submit_order


def spec(task_id: str, *producers: str) -> TaskSpec:
    return parse_spec(
        {
            "id": task_id,
            "command": ["true"],
            "results": "s3://bkt/r/",
            "inputs": [{"source": f"task://{p}/out", "path": f"in/{p}"} for p in producers],
            "outputs": [{"path": "out", "to": f"s3://bkt/o/{task_id}"}],
        }
    )


def ids(specs: list[TaskSpec]) -> list[str]:
    return [s.id for s in specs]


def test_producers_come_first_and_the_rest_keeps_its_order() -> None:
    batch = [spec("sum", "b", "a"), spec("x"), spec("a"), spec("b", "a"), spec("y")]
    assert ids(submit_order(batch)) == ["a", "b", "sum", "x", "y"]


def test_producers_outside_the_batch_are_left_to_the_dispatcher() -> None:
    batch = [spec("late", "submitted-before"), spec("z")]
    assert ids(submit_order(batch)) == ["late", "z"]


def test_a_chain_longer_than_the_recursion_limit_is_ordered() -> None:
    chain = [spec(f"t{n}", f"t{n - 1}") if n else spec("t0") for n in range(5000)]
    assert ids(submit_order(chain[::-1])) == [f"t{n}" for n in range(5000)]


def test_a_cycle_is_refused() -> None:
    with pytest.raises(ConfigError, match="cycle"):
        submit_order([spec("a", "c"), spec("b", "a"), spec("c", "b")])
