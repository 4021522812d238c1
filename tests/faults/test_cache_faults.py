"""The node cache under kill -9, a full disk, and many processes at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsd.cache import NodeCache
from stager.digest import HashingWriter, digest_bytes
from stager.errors import DiskFullError
from tests.helpers import files_under

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]

SLOW_INSERT = """
import sys, time
from pathlib import Path
from fsd.cache import NodeCache
from stager.digest import Digest
cache = NodeCache(Path(sys.argv[1]), quota_bytes=1 << 30)
def fill(writer):
    for _ in range(1000):
        writer.write(b"x" * 65536)
        time.sleep(0.01)
cache.ensure(Digest.parse(sys.argv[2]), 1000 * 65536, fill)
"""


def test_kill_9_during_insert_leaves_no_entry_and_the_temp_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    digest = digest_bytes(b"x" * 65536 * 1000)
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_INSERT, str(root), str(digest)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = files_under(root / "tmp")
        if temps and temps[0].stat().st_size > 0:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the insert never started")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert files_under(root / "data") == []
    assert files_under(root / "tmp") != []  # the killed insert's temp file
    cache = NodeCache(root, quota_bytes=1 << 30)  # a restart recovers
    assert files_under(root / "tmp") == []
    assert cache.stats().reserved_bytes == 0
    assert cache.lookup(digest) is None


def test_a_full_disk_gives_a_clear_error_and_no_partial_entry(small_disk: Path) -> None:
    cache = NodeCache(small_disk / "cache", quota_bytes=100 * MiB)  # the quota is not the limit
    data = os.urandom(6 * MiB)

    def fill(writer: HashingWriter) -> None:
        writer.write(data)

    with pytest.raises(DiskFullError, match="No space left"):
        cache.ensure(digest_bytes(data), len(data), fill)
    assert files_under(small_disk / "cache" / "data") == []
    assert files_under(small_disk / "cache" / "tmp") == []
    assert cache.stats().reserved_bytes == 0


@pytest.mark.parametrize("where", ["local-dir", "network-mount"])
def test_many_processes_sharing_one_cache_under_eviction_pressure(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue("network_mount") if where == "network-mount" else tmp_path
    root = base / "shared" / "cache"
    NodeCache(root, quota_bytes=6 * 64 * 1024)
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.shared_child", str(root), str(seed), "25"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(8)
    ]
    errors = [child.communicate(timeout=240)[1] for child in children]
    assert [child.returncode for child in children] == [0] * 8, errors
    cache = NodeCache(root, quota_bytes=6 * 64 * 1024)
    assert cache.verify() == []
    stats = cache.stats()
    assert stats.used_bytes <= 6 * 64 * 1024
    assert stats.reserved_bytes == 0
    assert files_under(root / "tmp") == []
    # No lock is left behind: a network mount's are files, a local root's are bytes of
    # its two lock tables (fsd.rangelocks).
    tables = {"table", "pins"} if where == "local-dir" else set()
    assert {p.name for p in (root / "locks").iterdir()} <= tables
