"""``stager s3 serve`` as a user runs it: stopped any way, started again on its own data."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from stager.awsconfig import Credentials
from stager.botoclient import make_client
from stager.locations import S3Url
from stager.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BAD = ("--bucket", "bb")


class Serve:
    """One ``stager s3 serve`` process, started as a shell's background job would be."""

    def __init__(self, data_dir: Path, env: dict[str, str], *args: str) -> None:
        self.log = data_dir.parent / "serve.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stager", "s3", "serve", "--dir", str(data_dir), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                # A background job of a non-interactive shell starts with SIGINT ignored.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            )
        self.exports = self._wait_for_exports()

    def _wait_for_exports(self) -> dict[str, str]:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops" not in (text := self.log.read_text()):
            assert self.process.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        lines = text.splitlines()
        pairs = [line.split("export ", 1)[1] for line in lines if line.startswith("  export ")]
        return dict(pair.split("=", 1) for pair in pairs)

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> object:
        keys = Credentials(
            access_key or self.exports["AWS_ACCESS_KEY_ID"],
            secret_key or self.exports["AWS_SECRET_ACCESS_KEY"],
        )
        settings = Settings(endpoint_url=self.exports["AWS_ENDPOINT_URL"], max_attempts=1)
        return make_client(settings, keys)

    def weed_pid(self) -> int:
        owner, weed = (int(w) for w in (self.log.parent / "s3" / "server.pid").read_text().split())
        assert owner == self.process.pid
        return weed

    def ended(self, timeout_s: float = 30) -> bool:
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    # Whatever a failed test left running on its data is ended here, by pid.
    for pid_file in tmp_path.glob("*/server.pid"):
        for pid in (int(word) for word in pid_file.read_text().split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _stop(serve: Serve, how: str) -> None:
    if how == "SIGINT":
        serve.process.send_signal(signal.SIGINT)
    elif how == "SIGTERM":
        serve.process.send_signal(signal.SIGTERM)
    elif how == "kill -9 (server left running)":
        serve.weed_pid()  # it is running now, and will outlive its stager
        serve.process.kill()
    else:  # both die at once
        os.kill(serve.weed_pid(), signal.SIGKILL)
        serve.process.kill()
    assert serve.ended(), f"{how} did not stop `stager s3 serve` within 30 s"


def test_serve_restarts_on_its_own_data_however_it_was_stopped(
    tmp_path: Path, env: dict[str, str]
) -> None:
    data = tmp_path / "s3"
    stops = ["SIGINT", "SIGTERM", "kill -9 (server left running)", "kill -9 (both)"]
    for number, how in enumerate([*stops, "SIGINT"]):
        serve = Serve(data, env, "--bucket", "my-bucket")
        client = serve.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="my-bucket").get("Contents", [])]
        assert keys == [f"k{n}" for n in range(number)]  # every earlier run's object is there
        client.put_object(Bucket="my-bucket", Key=f"k{number}", Body=b"x" * number)
        _stop(serve, how)


def test_a_second_server_on_the_same_data_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    first = Serve(tmp_path / "s3", env)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "stager", "s3", "serve", "--dir", str(tmp_path / "s3")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"is served by another embedded S3 server (process {first.process.pid})" in (
            second.stderr
        )
        first.client().list_buckets()  # the first one is untouched
    finally:
        first.process.send_signal(signal.SIGTERM)
        assert first.ended()


def test_the_users_own_aws_keys_do_not_open_the_server(tmp_path: Path, env: dict[str, str]) -> None:
    user = {"AWS_ACCESS_KEY_ID": "userkey12345", "AWS_SECRET_ACCESS_KEY": "usersecret12345"}
    serve = Serve(tmp_path / "s3", {**env, **user})
    try:
        assert serve.exports["AWS_ACCESS_KEY_ID"] != user["AWS_ACCESS_KEY_ID"]
        serve.client().list_buckets()
        with pytest.raises(ClientError) as refused:
            serve.client(user["AWS_ACCESS_KEY_ID"], user["AWS_SECRET_ACCESS_KEY"]).list_buckets()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        serve.process.send_signal(signal.SIGTERM)
        assert serve.ended()


def test_an_invalid_bucket_name_is_a_one_line_usage_error(
    tmp_path: Path, env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stager", "s3", "serve", "--dir", str(tmp_path / "s3"), *BAD],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("stager: error: invalid bucket name 'bb'")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s3").exists()  # nothing was started


def test_s3_gc_aborts_uploads_a_killed_process_left_open(
    run_cli: Any, raw_client: Any, prefix: S3Url
) -> None:
    key = prefix.key + "outputs/a b \u00fc.bin"
    upload = raw_client.create_multipart_upload(Bucket=prefix.bucket, Key=key)
    raw_client.upload_part(
        Bucket=prefix.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100
    )

    def still_open() -> list[str]:
        listed = raw_client.list_multipart_uploads(Bucket=prefix.bucket, Prefix=prefix.key)
        return [item["Key"] for item in listed.get("Uploads", [])]

    young = run_cli("s3", "gc", str(prefix))  # begun a moment ago: it may still be running
    assert young.returncode == 0 and "0 incomplete uploads" in young.stdout
    dry = run_cli("s3", "gc", str(prefix), "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0 and "would abort" in dry.stdout and still_open() == [key]
    done = run_cli("s3", "gc", str(prefix), "--older-than", "0s")
    assert done.returncode == 0 and "1 incomplete uploads older than 0s aborted" in done.stdout
    assert still_open() == []
    bad = run_cli("s3", "gc", str(prefix), "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
