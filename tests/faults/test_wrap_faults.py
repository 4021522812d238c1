"""The job wrapper when the object store dies during stage-out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from stager.locations import S3Url
from stager.s3server import LocalS3Server


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
