"""The job wrapper when the object store dies during stage-out."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fsd.cache import NodeCache
from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.helpers import files_under
from worker_hooks.task.parse import parse_spec
from worker_hooks.wrap.node import Node
from worker_hooks.wrap.wrapper import wrap_task


def run_wrap(server: LocalS3Server, spec: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **server.env(),
        "STAGER_CACHE_DIR": str(tmp_path / "cache"),
        "STAGER_SANDBOX_DIR": str(tmp_path / "sandboxes"),
        "STAGER_MAX_ATTEMPTS": "2",
        "STAGER_CONNECT_TIMEOUT_S": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "stager", "wrap", "--spec", str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def wait_until_readable(client: Any, bucket: str, key: str, timeout_s: float = 60) -> None:
    """A restarted server answers before its volumes are back; wait for old data."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return
        except ClientError:
            assert time.monotonic() < deadline, "the restarted server never served old data"
            time.sleep(0.5)


def test_server_killed_during_stage_out_then_rerun_succeeds(tmp_path: Path) -> None:
    server = LocalS3Server(tmp_path / "s3")
    server.start()
    try:
        client = server.client()
        client.create_bucket(Bucket="wrapfault")
        client.put_object(Bucket="wrapfault", Key="in/x", Body=b"payload")
        result_prefix = S3Url("wrapfault", "results/")
        spec = {
            "id": "dies",
            # Kill the server's whole process group once the output exists, but
            # only on the first run: the marker file makes the re-run harmless.
            "command": (
                f"cat x > y; if [ ! -e {tmp_path}/killed ]; then touch {tmp_path}/killed;"
                f" kill -9 -{server.pid}; fi"
            ),
            "shell": True,
            "inputs": [{"source": "s3://wrapfault/in/x", "path": "x"}],
            "outputs": [{"path": "y", "to": "s3://wrapfault/out/y"}],
            "results": str(result_prefix),
        }
        (tmp_path / "task.json").write_text(json.dumps(spec))
        failed = run_wrap(server, tmp_path / "task.json", tmp_path)
        assert failed.returncode == 13, failed.stderr
        assert "stager: error: stage-out failed" in failed.stderr
        assert "Traceback" not in failed.stderr

        port, credentials = server.ports["s3"], server.credentials
        server.stop()
        server = LocalS3Server(tmp_path / "s3", s3_port=port, credentials=credentials)
        server.start()
        client = server.client()
        wait_until_readable(client, "wrapfault", "in/x")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="wrapfault").get("Contents", [])]
        assert not [k for k in keys if k.endswith("result.json")]

        again = run_wrap(server, tmp_path / "task.json", tmp_path)
        assert again.returncode == 0, again.stderr
        assert client.get_object(Bucket="wrapfault", Key="out/y")["Body"].read() == b"payload"
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="wrapfault").get("Contents", [])]
        assert len([k for k in keys if k.endswith("result.json")]) == 1
    finally:
        server.stop()


def _leave_free_inodes(root: Path, free: int) -> None:
    """Add or remove empty files until exactly ``free`` more can be made."""
    filler = root / "filler"
    filler.mkdir(exist_ok=True)
    existing = sorted(filler.iterdir())
    while os.statvfs(root).f_favail < free and existing:
        existing.pop().unlink()
    while os.statvfs(root).f_favail > free:
        (filler / secrets.token_hex(8)).touch()


def _running(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return found.stdout.split()


def test_a_full_disk_while_the_wrapper_sets_up_is_exit_9_and_leaves_nothing_running(
    s3_server: LocalS3Server, tmp_path: Path, few_inodes: Path
) -> None:
    # With 0, 1, 2, ... files left, setting up fails at every step in turn: the
    # sandbox, its folders, the owner file, the logs, the command's run file.
    marker = f"sleep 3{os.getpid() % 1000:03d}.5"
    spec = tmp_path / "task.json"
    s3_server.client().create_bucket(Bucket="full-disk")
    body = {"id": "t", "command": f"{marker}; echo ok", "shell": True, "timeout_s": 1}
    spec.write_text(json.dumps({**body, "results": "s3://full-disk/r/"}))
    codes = []
    for free in range(10):
        sandboxes = few_inodes / f"run{free}"
        _leave_free_inodes(few_inodes, 2 + free)  # the run's own folder, and its parent
        sandboxes.mkdir()
        env = {
            **os.environ,
            **s3_server.env(),
            "STAGER_CACHE_DIR": str(tmp_path / "cache"),
            "STAGER_SANDBOX_DIR": str(sandboxes / "s"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "stager", "wrap", "--spec", str(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        codes.append(done.returncode)
        assert done.returncode in (9, 12), done.stderr  # full disk, or it got to run (timeout)
        assert "internal error" not in done.stderr
        assert _running(marker) == [], f"left running with {free} files free"
        if done.returncode == 12:
            break
    assert 9 in codes and codes[-1] == 12  # it failed on the way, then ran once there was room


def test_an_output_that_fits_the_quota_but_not_the_disk_is_uploaded_from_the_sandbox(
    s3_server: LocalS3Server, tmp_path: Path, small_disk: Path
) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="full-cache")
    cache = NodeCache(small_disk / "cache", quota_bytes=1 << 30)  # the disk is the limit
    with ObjectStore(s3_server.settings(), credentials=s3_server.credentials) as store:
        node = Node(cache=cache, store=store, sandbox_dir=tmp_path / "sandboxes")
        spec = parse_spec(
            {
                "id": "big",
                "command": "head -c 6291456 /dev/urandom > out.bin",
                "shell": True,
                "outputs": [{"path": "out.bin", "to": "s3://full-cache/out.bin"}],
            }
        )
        result = wrap_task(spec, node)
        (record,) = result.manifest.outputs
        data = store.get_bytes(record.url)
    assert len(data) == 6 * 1024 * 1024 and digest_bytes(data) == record.digest
    assert files_under(small_disk / "cache" / "tmp") == []
    assert files_under(small_disk / "cache" / "data") == []
