"""Faults a user will meet: a full disk, a killed process, a server that dies."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.faultproxy import FaultProxy, Faults
from fsd.cache import NodeCache
from fsd.stagein import warm
from stager.digest import digest_stream
from stager.digestcache import DigestCache
from stager.errors import DiskFullError, IntegrityError, UnreachableError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.pull import pull
from stager.push import push
from stager.s3server import LocalS3Server
from stager.settings import TransferClient
from tests.helpers import files_under, temp_files_under, write_random

MiB = 1024 * 1024


def test_full_disk_gives_a_clear_error_and_no_partial_file(
    tmp_path: Path, small_disk: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    write_random(tmp_path / "big.bin", 12 * MiB)
    push([str(tmp_path / "big.bin")], prefix, store=store, digests=digests)
    with pytest.raises(DiskFullError) as caught:
        pull(prefix, small_disk / "node", store=store, digests=digests, dest_is_dir=True)
    assert caught.value.exit_code == 9
    assert "No space left" in caught.value.message
    assert files_under(small_disk) == []


def test_full_disk_from_the_cli(
    tmp_path: Path, small_disk: Path, run_cli: Any, prefix: S3Url
) -> None:
    write_random(tmp_path / "big.bin", 12 * MiB)
    assert run_cli("push", str(tmp_path / "big.bin"), "--to", str(prefix)).returncode == 0
    result = run_cli("pull", str(prefix), str(small_disk / "node"))
    assert result.returncode == 9, result.stderr
    assert (
        result.stderr.startswith("stager: error: cannot write") and "Traceback" not in result.stderr
    )
    assert files_under(small_disk) == []


def test_kill_9_during_pull_never_leaves_a_partial_file_under_its_name(
    tmp_path: Path, run_cli: Any, prefix: S3Url, s3_server: LocalS3Server
) -> None:
    write_random(tmp_path / "huge.bin", 200 * MiB)
    assert run_cli("push", str(tmp_path / "huge.bin"), "--to", str(prefix)).returncode == 0
    node = tmp_path / "node"
    env = {
        **os.environ,
        **s3_server.env(),
        "STAGER_STATE_DIR": str(tmp_path / "st"),
        "STAGER_MAX_CONCURRENCY": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stager",
            "pull",
            str(prefix.child("huge.bin")),
            str(node / "huge.bin"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not temp_files_under(node) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if process.poll() is not None:
        pytest.skip("the pull finished before it could be killed")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (node / "huge.bin").exists()
    # A second pull completes and leaves exactly the verified file plus, at most, the killed temp.
    assert run_cli("pull", str(prefix.child("huge.bin")), str(node / "huge.bin")).returncode == 0
    assert (node / "huge.bin").stat().st_size == 200 * MiB


def test_server_dying_mid_pull_is_unreachable_and_leaves_nothing(tmp_path: Path) -> None:
    server = LocalS3Server(tmp_path / "s3")
    server.start()
    try:
        settings = server.settings(
            state_dir=tmp_path / "state",
            progress=False,
            max_attempts=2,
            connect_timeout_s=1.0,
            read_timeout_s=2.0,
            max_concurrency=1,
        )
        with (
            ObjectStore(settings, credentials=server.credentials) as store,
            DigestCache(None) as digests,
        ):
            store.ensure_bucket("dying")
            write_random(tmp_path / "big.bin", 300 * MiB)
            prefix = S3Url("dying", "p/")
            push([str(tmp_path / "big.bin")], prefix, store=store, digests=digests)
            node = tmp_path / "node"

            def stop_server_once_bytes_flow() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if any(p.stat().st_size > 20 * MiB for p in temp_files_under(node)):
                        break
                    time.sleep(0.005)
                server.stop()

            watcher = threading.Thread(target=stop_server_once_bytes_flow)
            watcher.start()
            try:
                with pytest.raises(UnreachableError):
                    pull(prefix, node, store=store, digests=digests, dest_is_dir=True)
            finally:
                watcher.join()
            assert files_under(node) == []
    finally:
        server.stop()


def test_stopping_the_server_leaves_no_process(tmp_path: Path) -> None:
    server = LocalS3Server(tmp_path / "s3")
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    server.stop()  # idempotent


@pytest.mark.parametrize("client", ["crt", "s3transfer"])
def test_a_1_gib_object_damaged_in_flight_is_refused_and_nothing_is_published(
    tmp_path: Path, s3_server: LocalS3Server, prefix: S3Url, client: str
) -> None:
    settings = s3_server.settings(
        state_dir=tmp_path / "state", progress=False, transfer_client=TransferClient(client)
    )
    url = prefix.child("huge.bin")
    data = tmp_path / "huge.bin"
    with data.open("wb") as out:  # 1 GiB, without generating a GiB of randomness
        block = os.urandom(MiB)
        for n in range(1024):
            out.write(block[n:] + block[:n])
    digest, size = digest_stream(data.open("rb"))
    with ObjectStore(settings, credentials=s3_server.credentials) as store:
        store.upload_file(data, url, digest=digest, size=size)
    data.unlink()

    # Every answer through the proxy has one byte flipped; lengths and headers are intact.
    proxy = FaultProxy(
        s3_server.endpoint_url, Faults(error_rate=0, reset_rate=0, delay_rate=0, flip_rate=1.0)
    )
    through = dataclasses.replace(settings, endpoint_url=proxy.start())
    try:
        with (
            ObjectStore(through, credentials=s3_server.credentials) as damaged,
            DigestCache(None) as digests,
        ):
            with pytest.raises(IntegrityError, match="does not match"):
                pull(
                    url,
                    tmp_path / "node" / "huge.bin",
                    store=damaged,
                    digests=digests,
                    dest_is_dir=False,
                )
            cache = NodeCache(tmp_path / "cache", quota_bytes=4 * 1024 * MiB)
            with pytest.raises(IntegrityError):
                warm([url], cache=cache, store=damaged)
    finally:
        proxy.stop()
    assert files_under(tmp_path / "node") == []
    assert (
        files_under(tmp_path / "cache" / "data") == []
        and files_under(tmp_path / "cache" / "tmp") == []
    )
    assert proxy.injected["flip"] >= 4  # each fetched twice, then refused
