"""The demo end to end, small: every policy is used and its summary adds up."""

from __future__ import annotations

from pathlib import Path

from worker_hooks.local.demo import SAMPLE_BYTES, DemoShape, run_demo


def test_the_demo_moves_samples_peer_to_peer_and_writes_the_mirror_behind(tmp_path: Path) -> None:
    shape = DemoShape(
        map_tasks=6, workers=3, reference_bytes=4 * 1024 * 1024, task_input_bytes=1024
    )
    lines: list[str] = []
    summary = run_demo(tmp_path, echo=lines.append, shape=shape)
    assert summary.tasks == 7
    assert summary.outputs_verified == 6 + 2  # six checksums, the summary and the merged samples
    assert summary.outputs_on_nodes == 6  # the samples, kept `local`
    sample = SAMPLE_BYTES + shape.task_input_bytes
    assert sum(summary.tasks_per_worker.values()) == 7  # one attempt each
    # The reduce read the sample and checksum of every map that ran on another node
    # from that node's cache (a checksum line is under 100 bytes).
    elsewhere = 7 - summary.tasks_per_worker[summary.reduce_worker]
    assert elsewhere * sample <= summary.bytes_from_peers <= elsewhere * (sample + 100)
    assert summary.bytes_written_behind == 6 * sample  # merged.bin, mirrored then written
    assert any("peer to peer" in line for line in lines)


def test_the_chaos_demo_loses_a_worker_and_its_disk_and_still_verifies_everything(
    tmp_path: Path,
) -> None:
    shape = DemoShape(
        map_tasks=6,
        workers=3,
        reference_bytes=4 * 1024 * 1024,
        task_input_bytes=1024,
        chaos=True,
    )
    lines: list[str] = []
    summary = run_demo(tmp_path, echo=lines.append, shape=shape)
    assert summary.killed is not None
    assert summary.outputs_verified == 6 + 2  # every output in S3 checked by digest
    # What the killed worker had done or held was made again, or its leases re-run.
    assert len(summary.recomputed) + summary.extra_attempts >= 1
    assert any(line.startswith("chaos:") and "recomputed" in line for line in lines)
