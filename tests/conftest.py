"""Shared fixtures: one real SeaweedFS S3 server per test session.

Tests share one bucket and each gets its own prefix, because every bucket
costs the server a set of volumes. The server listens on loopback on free
ports and is stopped (SIGTERM, bounded wait, SIGKILL) when the session ends.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stager.digestcache import DigestCache
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server, find_weed
from stager.settings import Settings, TransferClient

SESSION_BUCKET = "stager-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    server = LocalS3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.client().create_bucket(Bucket=SESSION_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(s3_server: LocalS3Server, tmp_path: Path) -> Settings:
    # Small parts so that modest test files exercise multipart and ranged GETs.
    return s3_server.settings(
        state_dir=tmp_path / "state",
        part_size_bytes=5 * 1024 * 1024,
        multipart_threshold_bytes=5 * 1024 * 1024,
        progress=False,
    )


@pytest.fixture
def store(settings: Settings, s3_server: LocalS3Server) -> Iterator[ObjectStore]:
    with ObjectStore(settings, credentials=s3_server.credentials) as object_store:
        yield object_store


@pytest.fixture(params=["crt", "s3transfer"])
def either_store(
    request: pytest.FixtureRequest, settings: Settings, s3_server: LocalS3Server
) -> Iterator[ObjectStore]:
    """A store whose object bytes move through each client in turn."""
    chosen = dataclasses.replace(settings, transfer_client=TransferClient(request.param))
    with ObjectStore(chosen, credentials=s3_server.credentials) as object_store:
        yield object_store


@pytest.fixture
def digests(tmp_path: Path) -> Iterator[DigestCache]:
    with DigestCache(tmp_path / "state" / "digests.sqlite") as cache:
        yield cache


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> S3Url:
    """A fresh prefix in the session bucket, unique to this test."""
    name = request.node.name.replace("[", "-").replace("]", "").lower()[:60]
    return S3Url(SESSION_BUCKET, f"{name}-{secrets.token_hex(3)}/")


@pytest.fixture
def raw_client(s3_server: LocalS3Server) -> Any:
    """Plain boto3, standing in for "another tool" writing and reading objects."""
    return s3_server.client()


@pytest.fixture
def run_cli(s3_server: LocalS3Server, tmp_path: Path) -> Any:
    """Run ``python -m stager`` as a real process against the test server."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            **s3_server.env(),
            "STAGER_STATE_DIR": str(tmp_path / "cli-state"),
            "STAGER_PART_SIZE_BYTES": "5M",
            "STAGER_MULTIPART_THRESHOLD_BYTES": "5M",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "stager", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def network_mount(tmp_path: Path, s3_server: LocalS3Server) -> Iterator[Path]:
    """A real network file system: ``weed mount`` of the test server's filer over FUSE."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: FUSE mounts are not available")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    log = tmp_path / "mount.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(find_weed()),
                "mount",
                f"-filer={s3_server.filer_address}",
                f"-dir={mount_point}",
                f"-filer.path=/shared-{tmp_path.name}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount_point) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not os.path.ismount(mount_point):
            pytest.skip(f"weed mount did not come up: {log.read_text()[-300:]}")
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
