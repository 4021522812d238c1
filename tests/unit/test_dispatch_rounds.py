"""The dispatch bench's turns: shares of the tasks, and rounds summed into one figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.dispatch import (
    ParslFigures,
    Shape,
    StagerRound,
    _shape_figures,
    _split,
    run_dispatch_bench,
)
from stager.errors import ConfigError


def test_the_tasks_are_split_into_even_consecutive_shares() -> None:
    shares = _split(10, 3)
    assert [len(s) for s in shares] == [3, 3, 4]
    assert [n for share in shares for n in share] == list(range(10))  # each number once
    assert _split(5, 1) == [range(5)]


def test_rounds_are_summed_by_time_not_averaged_by_rate() -> None:
    stager = [
        StagerRound(done=100, seconds=1.0, submit_s=0.1, cpu_s={"workers": 0.5}),
        StagerRound(done=100, seconds=4.0, submit_s=0.1, cpu_s={"workers": 1.5}),
    ]
    parsl: list[ParslFigures | None] = [
        ParslFigures(tasks=100, tasks_per_s=200.0, seconds=0.5, cpu_ms_per_task=1.0),
        ParslFigures(tasks=100, tasks_per_s=50.0, seconds=2.0, cpu_ms_per_task=3.0),
    ]
    figures = _shape_figures(Shape.IO, 200, stager, parsl)
    assert figures.tasks_per_s == 40.0  # 200 tasks in 5 s (the mean of the rates is 62.5)
    assert figures.cpu_ms_per_task == {"workers": 10.0}
    assert figures.parsl is not None and figures.parsl.tasks_per_s == 80.0
    assert figures.parsl.cpu_ms_per_task == 2.0
    assert figures.over_parsl == 0.5
    assert figures.round_ratios == (0.5, 0.5)


def test_without_parsl_there_is_no_ratio() -> None:
    stager = [StagerRound(done=10, seconds=1.0, submit_s=0.0, cpu_s={"workers": 0.1})]
    figures = _shape_figures(Shape.TRUE, 10, stager, [None])
    assert (figures.parsl, figures.over_parsl, figures.round_ratios) == (None, None, ())


def test_more_rounds_than_tasks_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rounds"):
        run_dispatch_bench(
            tmp_path,
            tasks=2,
            workers=1,
            slots=1,
            shapes=(Shape.TRUE,),
            rounds=3,
        )
