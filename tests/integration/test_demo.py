"""The demo end to end, small: every policy is used and its summary adds up."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from worker_hooks.local.demo import SAMPLE_BYTES, DemoShape, run_demo

# As a root process in a closed network starts it (docs/workflows.md names the command).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


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
    assert summary.report == tmp_path / "report.html"
    assert "<h1>Workflow demo-run1</h1>" in summary.report.read_text()
    check_report_in_a_browser(summary.report, tmp_path / "browser")


def check_report_in_a_browser(report: Path, profile: Path) -> None:
    """Open the run report in headless Chromium: its DOM holds the timeline's chart, and a
    screenshot of it is a real picture."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium here (apt-get install chromium)")
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1400"]
    dom = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    timeline = dom[dom.index('<section id="timeline">') :]
    assert "<svg" in timeline.split("</section>")[0]  # the Gantt chart, drawn
    assert "node-1" in timeline and "attempts per node" in timeline
    assert '<section id="sources">' in dom
    shot = report.with_suffix(".png")
    subprocess.run(
        [*flags, f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


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
