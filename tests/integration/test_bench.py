"""The transfer benchmark runs end to end and checks what every tool delivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.peers import PEER_VENV_ENV
from bench.transfer import TIME_BINARY, Workload, digests_under, make_files


def test_digests_of_a_cache_match_the_source(tmp_path: Path) -> None:
    expected = make_files(tmp_path / "src", Workload("w", 3, 1000))
    assert digests_under(tmp_path / "src") == expected
    (tmp_path / "src" / "f00000.bin").write_bytes(b"changed")
    assert digests_under(tmp_path / "src") != expected


@pytest.mark.skipif(not Path(TIME_BINARY).exists(), reason="GNU time is not installed")
def test_stager_transfer_bench_writes_verified_figures(run_cli: Any, tmp_path: Path) -> None:
    done = run_cli(
        "bench",
        "transfer",
        "--scale",
        "0.001",
        "--tools",
        "stager,s3fs",
        "--workloads",
        "many-small",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    (result,) = (tmp_path / "out").glob("transfer-*.json")
    data = json.loads(result.read_text())
    assert {(r["tool"], r["direction"]) for r in data["runs"]} == {
        ("stager", "upload"),
        ("stager", "download"),
        ("s3fs", "upload"),
        ("s3fs", "download"),
        ("ceiling", "download"),
    }
    tools = [r for r in data["runs"] if r["tool"] != "ceiling"]
    assert all(r["ok"] and r["peak_rss_bytes"] > 0 and r["cpu_s"] > 0 for r in tools)
    assert set(data["ratios"]) == {"many-small/upload", "many-small/download"}
    assert set(data["of_ceiling"]["many-small"]) == {"stager", "s3fs"}
    assert data["cpu_s_per_gib"]["many-small/download"]["stager"] > 0
    assert data["warm_stage_in_ms_per_file"]["many-small"] > 0


def test_the_dispatch_bench_says_when_parsl_is_not_there_to_compare(
    run_cli: Any, tmp_path: Path
) -> None:
    (tmp_path / "no-peers").mkdir()  # peer tools without Parsl (or any Python)
    done = run_cli(
        "bench",
        "dispatch",
        "--tasks",
        "10",
        "--out",
        str(tmp_path / "out"),
        env={PEER_VENV_ENV: str(tmp_path / "no-peers")},
    )
    assert done.returncode == 0, done.stderr
    (result,) = (tmp_path / "out").glob("dispatch-*.json")
    data = json.loads(result.read_text())
    true, io = data["shapes"]
    assert (true["shape"], io["shape"]) == ("true", "io")
    for shape in (true, io):
        assert shape["done"] == 10 and shape["tasks_per_s"] > 0
        assert shape["cpu_ms_per_task"]["dispatcher"] > 0 and shape["parsl"] is None
    assert data["over_parsl"] == {"true": None, "io": None}
    (summary,) = (tmp_path / "out").glob("dispatch-*.md")
    assert "Parsl: not installed" in summary.read_text()


def test_the_dispatcher_scale_bench_submits_and_serves_simulated_workers(
    run_cli: Any, tmp_path: Path
) -> None:
    done = run_cli(
        "bench",
        "dispatcher-scale",
        *("--tasks", "300", "--workers", "6", "--processes", "2"),
        *("--task-s", "0.05", "--heartbeat-s", "0.2", "--duration-s", "2"),
        *("--out", str(tmp_path / "out")),
    )
    assert done.returncode == 0, done.stderr
    (result,) = (tmp_path / "out").glob("dispatcher-scale-*.json")
    data = json.loads(result.read_text())
    assert data["tasks"] == 300 and data["lease_errors"] == 0
    assert 0 < data["completions"] <= 300 and data["lease_rtt_p50_ms"] > 0
    assert data["db_mib"] > 0 and data["dispatcher_rss_mib"] > 0


def test_the_parsl_bench_reads_a_shared_reference_once_per_node_with_stager(
    run_cli: Any, tmp_path: Path
) -> None:
    pytest.importorskip("parsl")
    done = run_cli(
        "bench", "parsl", "--samples", "4", "--reference-mib", "4", "--out", str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    (result,) = tmp_path.glob("parsl-*.json")
    stager, plain = json.loads(result.read_text())["runs"]
    assert plain["mib_from_s3"] == 4 * 4 + 4  # the reference for every task, and the samples
    assert 4 + 4 <= stager["mib_from_s3"] <= 2 * 4 + 4  # the reference once per node (block)
