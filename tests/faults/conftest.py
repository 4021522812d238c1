"""Fixtures for fault tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stager.s3server import LocalS3Server
from worker_hooks.local.cluster import LocalCluster


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs), so writes hit ENOSPC."""
    yield from _tmpfs(tmp_path / "small", "size=4m")


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A real file system (tmpfs) with room for bytes but for only 200 files."""
    yield from _tmpfs(tmp_path / "few-inodes", "size=64m,nr_inodes=200")


def _tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.fixture
def cluster(s3_server: LocalS3Server, tmp_path: Path) -> Iterator[LocalCluster]:
    """A dispatcher (leases of 6 s) against the real S3 server; add workers to it."""
    env = {**s3_server.env(), "STAGER_STATE_DIR": str(tmp_path / "state")}
    with LocalCluster(tmp_path / "cluster", env, lease_s=6) as started:
        yield started
