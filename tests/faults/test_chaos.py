"""The short chaos soak: kill -9s with wiped scratch, a worker stopped past its lease,
and an S3 that fails 5 % of requests and resets 1 % mid-body. Nothing may be lost."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import ChaosShape, run_chaos_bench


def test_a_workflow_survives_killed_nodes_a_stopped_one_and_a_faulty_s3(tmp_path: Path) -> None:
    figures = run_chaos_bench(tmp_path, ChaosShape(tasks=100, workers=3, kills=2, seed=3))
    chaos = figures.chaos
    assert (chaos.lost, chaos.missing, chaos.corrupt) == (0, 0, 0), chaos.damaged
    assert chaos.kills == 2 and chaos.s3_faults.get("error", 0) > 0
    assert figures.calm.attempts_beyond_first == 0 and figures.calm.recomputed_tasks == 0
