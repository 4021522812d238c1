"""The ``stager`` command as a user runs it: real processes, real server."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest

from bench.faultproxy import NO_FAULTS, FaultProxy
from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.s3server import free_ports
from tests.helpers import files_under, http_stand_in, put_tampered, write_random


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stager: error: ")
    assert text in lines[0]
    assert "Traceback" not in result.stderr


def test_push_then_pull_round_trip(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    data = write_random(tmp_path / "in" / "a.bin", 6 * 1024 * 1024)
    pushed = run_cli(
        "push", str(tmp_path / "in"), "--to", str(prefix), "--manifest", str(tmp_path / "m.json")
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "uploaded 1" in pushed.stdout and "skipped 0" in pushed.stdout
    assert str(digest_bytes(data)) in (tmp_path / "m.json").read_text()

    again = run_cli("push", str(tmp_path / "in"), "--to", str(prefix))
    assert "uploaded 0" in again.stdout and "skipped 1 unchanged" in again.stdout

    pulled = run_cli("pull", str(prefix), str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "in" / "a.bin").read_bytes() == data
    assert "0 unverified" in pulled.stdout


def test_missing_bucket(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("pull", "s3://no-such-bucket-here/x", str(tmp_path / "out"))
    assert_one_line_error(result, 3, "no-such-bucket-here")
    write_random(tmp_path / "f", 3)
    result = run_cli("push", str(tmp_path / "f"), "--to", "s3://no-such-bucket-here/p/")
    assert_one_line_error(result, 3, "does not exist")


def test_missing_key(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    result = run_cli("pull", str(prefix.child("nothing.txt")), str(tmp_path / "out"))
    assert_one_line_error(result, 3, "nothing to pull")
    assert files_under(tmp_path / "out") == []


def test_bad_credentials(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    result = run_cli(
        "pull", str(prefix), str(tmp_path / "out"), env={"AWS_SECRET_ACCESS_KEY": "wrong"}
    )
    assert_one_line_error(result, 4, "access denied")
    assert "wrong" not in result.stderr


def test_unreachable_endpoint(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    [port] = free_ports(1)
    result = run_cli(
        "--endpoint-url",
        f"http://127.0.0.1:{port}",
        "pull",
        str(prefix),
        str(tmp_path / "out"),
        env={"STAGER_MAX_ATTEMPTS": "2", "STAGER_CONNECT_TIMEOUT_S": "1"},
    )
    assert_one_line_error(result, 5, "did not answer")


@pytest.mark.parametrize(
    "args",
    [
        ("pull", "not-a-url", "out"),
        ("push", "x", "--to", "s3://Bad_Bucket/p/"),
        ("pull", "s3://ab", "out"),
    ],
)
def test_malformed_url(run_cli: Any, args: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    result = run_cli(*[a if a != "x" else str(tmp_path / "x") for a in args])
    assert_one_line_error(result, 2, "")


def test_unreadable_local_file(run_cli: Any, tmp_path: Path, prefix: S3Url) -> None:
    result = run_cli("push", str(tmp_path / "missing.txt"), "--to", str(prefix))
    assert_one_line_error(result, 8, "missing.txt does not exist")


def test_digest_mismatch(run_cli: Any, tmp_path: Path, prefix: S3Url, raw_client: Any) -> None:
    key = prefix.child("bad.bin")
    put_tampered(raw_client, key, b"xx", claimed=b"yy")
    result = run_cli("pull", str(key), str(tmp_path / "node" / "bad.bin"))
    assert_one_line_error(result, 7, "does not match")
    assert files_under(tmp_path / "node") == []


def test_debug_shows_the_traceback(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("--debug", "push", str(tmp_path / "missing"), "--to", "s3://bkt/p/")
    assert result.returncode == 8
    assert "Traceback" in result.stderr


def test_help_has_examples(run_cli: Any) -> None:
    for command in (
        ["--help"],
        ["push", "--help"],
        ["pull", "--help"],
        ["s3", "serve", "--help"],
        ["demo", "--help"],
    ):
        result = run_cli(*command)
        assert result.returncode == 0
        assert "Examples:" in result.stdout


def child_pids(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def assert_all_gone(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@contextlib.contextmanager
def running_stager(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A ``stager`` process with piped output, killed if the test leaves it running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stager", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    """Lines of stdout up to and including the first that starts with ``marker``."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(marker):
            break
    return lines


def test_s3_serve_prints_the_environment_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with running_stager(
        "s3", "serve", "--dir", str(tmp_path / "s3"), "--bucket", "served"
    ) as process:
        exports = [
            line.strip()[len("export ") :].partition("=")
            for line in read_until(process, "Ctrl-C")
            if line.strip().startswith("export ")
        ]
        env = {name: value for name, _, value in exports}
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["served"]
        servers = child_pids(process.pid)
        assert servers, "the weed server should be a child of stager"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert_all_gone(servers)


def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    with running_stager("demo", "--work-dir", str(tmp_path / "demo")) as process:
        read_until(process, "dispatcher ")
        children = child_pids(process.pid)
        assert len(children) == 5, "the S3 server, the dispatcher and three workers"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 130
        assert_all_gone(children)
    # Each worker drained on SIGTERM and said so (none needed the SIGKILL fallback).
    logs = sorted((tmp_path / "demo" / "cluster" / "logs").glob("node-*.log"))
    assert len(logs) == 3
    for log in logs:
        assert "stopped;" in log.read_text(), log.read_text()


@contextlib.contextmanager
def answering(status: int, headers: dict[str, str], body: bytes = b"") -> Iterator[str]:
    """An HTTP endpoint on loopback that answers every request alike; yields its URL."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            sent = body if self.command != "HEAD" else b""
            self.send_header("Content-Length", str(len(sent)))
            self.end_headers()
            self.wfile.write(sent)

        do_GET = do_HEAD = do_PUT = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    with http_stand_in(Answer) as url:
        yield url


def test_an_endpoint_that_is_not_s3_is_named_as_such(run_cli: Any, tmp_path: Path) -> None:
    with answering(401, {}) as endpoint:
        done = run_cli(
            "pull", "s3://bkt/x", str(tmp_path / "x"), env={"AWS_ENDPOINT_URL": endpoint}
        )
    assert done.returncode == 4, done.stderr
    assert "answered HTTP 401 without an S3 error" in done.stderr
    assert "401: 401" not in done.stderr and "names an S3 server" in done.stderr


@pytest.mark.parametrize("client", ["crt", "s3transfer"])
@pytest.mark.parametrize("answer", ["301", "400"])
def test_a_bucket_in_another_region_is_named_with_its_region(
    run_cli: Any, tmp_path: Path, client: str, answer: str
) -> None:
    # What S3 answers a request sent to another region's endpoint (301), or signed for
    # another region (400); a HEAD's answer has no body, only the region header.
    status, code = (301, "PermanentRedirect") if answer == "301" else (400, "BadRequest")
    body = f"<Error><Code>{code}</Code><Message>elsewhere</Message></Error>".encode()
    headers = {"x-amz-bucket-region": "eu-west-3"}
    with answering(status, {"Content-Type": "application/xml", **headers}, body) as endpoint:
        env = {"AWS_ENDPOINT_URL": endpoint, "STAGER_TRANSFER_CLIENT": client}
        done = run_cli("pull", "s3://lab-data/ref.fa", str(tmp_path / "ref.fa"), env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "bucket 'lab-data' is in region eu-west-3" in line and "--region eu-west-3" in line


def test_a_key_with_dot_dot_parts_is_a_usage_error(run_cli: Any, tmp_path: Path) -> None:
    done = run_cli("pull", "s3://bkt/../x", str(tmp_path / "x"))
    assert done.returncode == 2 and "'.' or '..' part" in done.stderr
    assert "400" not in done.stderr


def test_the_hint_after_a_damaged_object_repairs_it(
    run_cli: Any, tmp_path: Path, prefix: S3Url, raw_client: Any
) -> None:
    original = write_random(tmp_path / "in" / "ref.bin", 64 * 1024)
    assert run_cli("push", str(tmp_path / "in" / "ref.bin"), "--to", str(prefix)).returncode == 0
    key = prefix.child("ref.bin")
    # Same size, the original's digest in its metadata, other bytes.
    put_tampered(raw_client, key, bytes(b ^ 1 for b in original), claimed=original)
    refused = run_cli("pull", str(key), str(tmp_path / "out" / "ref.bin"))
    assert refused.returncode == 7 and "stager push --verify-remote" in refused.stderr
    plain = run_cli("push", str(tmp_path / "in" / "ref.bin"), "--to", str(prefix))
    assert "skipped 1 unchanged" in plain.stdout  # metadata alone cannot see the damage
    repaired = run_cli(
        "push", str(tmp_path / "in" / "ref.bin"), "--to", str(prefix), "--verify-remote"
    )
    assert repaired.returncode == 0 and "uploaded 1" in repaired.stdout, repaired.stdout
    again = run_cli(
        "push", str(tmp_path / "in" / "ref.bin"), "--to", str(prefix), "--verify-remote"
    )
    assert "skipped 1 unchanged" in again.stdout  # intact objects are read, not rewritten
    assert run_cli("pull", str(key), str(tmp_path / "out" / "ref.bin")).returncode == 0
    assert (tmp_path / "out" / "ref.bin").read_bytes() == original


BOTOCORE_MODULES = ("boto3", "botocore", "s3transfer")


def loaded_modules(importtime: str) -> set[str]:
    """The modules ``python -X importtime`` reported on stderr."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_a_pull_never_loads_botocore(
    run_cli: Any, tmp_path: Path, prefix: S3Url, raw_client: Any
) -> None:
    for key in ("one.txt", "dir/a b \u00fc.txt", "dir/sub/c.bin"):
        raw_client.put_object(Bucket=prefix.bucket, Key=prefix.key + key, Body=key.encode())
    for source, dest in ((prefix.child("one.txt"), "one.txt"), (prefix.child("dir/"), "dir/")):
        done = run_cli(
            "pull", str(source), str(tmp_path / dest), env={"PYTHONPROFILEIMPORTTIME": "1"}
        )
        assert done.returncode == 0, done.stderr
        loaded = loaded_modules(done.stderr)
        assert "stager.pull" in loaded and "awscrt.s3" in loaded  # the probe sees imports
        assert not {m for m in loaded if m.split(".")[0] in BOTOCORE_MODULES}
    assert (tmp_path / "dir" / "a b \u00fc.txt").read_bytes() == "dir/a b \u00fc.txt".encode()
    assert (tmp_path / "dir" / "sub" / "c.bin").read_bytes() == b"dir/sub/c.bin"


def test_region_endpoint_and_keys_come_from_a_profile(
    run_cli: Any, tmp_path: Path, prefix: S3Url, raw_client: Any, s3_server: Any
) -> None:
    raw_client.put_object(Bucket=prefix.bucket, Key=prefix.key + "p.txt", Body=b"profile")
    config, keys = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text(
        f"[profile lab]\nregion = {s3_server.env()['AWS_REGION']}\n"
        f"endpoint_url = {s3_server.endpoint_url}\n"
    )
    keys.write_text(
        f"[lab]\naws_access_key_id = {s3_server.credentials.access_key}\n"
        f"aws_secret_access_key = {s3_server.credentials.secret_key}\n"
    )
    env = {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(keys),
        "AWS_ENDPOINT_URL": "",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_REGION": "",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    dest = tmp_path / "p.txt"
    done = run_cli("--profile", "lab", "pull", str(prefix.child("p.txt")), str(dest), env=env)
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == b"profile"
    assert not {m for m in loaded_modules(done.stderr) if m.split(".")[0] in BOTOCORE_MODULES}
    missing = run_cli("--profile", "nope", "pull", str(prefix.child("p.txt")), str(dest), env=env)
    assert missing.returncode == 2 and "AWS profile not found: nope" in missing.stderr


def test_a_site_behind_an_http_proxy_moves_every_byte_through_it(
    run_cli: Any, tmp_path: Path, prefix: S3Url
) -> None:
    # A forward proxy (it forwards each request to the absolute URL it names) that
    # records what passed. Stager's small requests cannot use a proxy: it must notice
    # HTTP_PROXY and move the bytes with botocore, which does.
    proxy = FaultProxy("", NO_FAULTS)
    try:
        env = {"HTTP_PROXY": proxy.start(), "NO_PROXY": "example.invalid"}
        data = write_random(tmp_path / "in" / "a b ü.bin", 9 * 1024 * 1024)  # multipart
        small = write_random(tmp_path / "in" / "small.txt", 100)
        pushed = run_cli("push", str(tmp_path / "in"), "--to", str(prefix), env=env)
        assert pushed.returncode == 0, pushed.stderr
        pulled = run_cli("pull", str(prefix), str(tmp_path / "out"), env=env)
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "out" / "in" / "a b ü.bin").read_bytes() == data
        assert (tmp_path / "out" / "in" / "small.txt").read_bytes() == small
        passed = Counter(
            (method, name)
            for method, path, _ in proxy.seen
            for name in ("a b ü.bin", "small.txt")
            if unquote(path).split("?")[0].endswith(f"{prefix.key}in/{name}")
        )
        # Each object written and read: the large one in parts (three PUTs) or whole.
        assert passed[("PUT", "small.txt")] == 1 and passed[("GET", "small.txt")] >= 1, passed
        assert passed[("PUT", "a b ü.bin")] >= 2 and passed[("GET", "a b ü.bin")] >= 1, passed
    finally:
        proxy.stop()
    # Where NO_PROXY names the endpoint, nothing goes through the proxy.
    proxy = FaultProxy("", NO_FAULTS)
    try:
        env = {"HTTP_PROXY": proxy.start(), "NO_PROXY": "localhost,127.0.0.1"}
        again = run_cli("pull", str(prefix), str(tmp_path / "again"), env=env)
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "again" / "in" / "small.txt").read_bytes() == small
        assert proxy.seen == []
    finally:
        proxy.stop()
