"""Credentials from an instance role, as on EC2: IMDSv2 (a token first, then the role's
name, then its temporary keys, each request carrying the token), refreshed as they
expire. The metadata service is a stand-in on loopback, found the standard way
(``AWS_EC2_METADATA_SERVICE_ENDPOINT``)."""

from __future__ import annotations

import contextlib
import http.server
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stager.awsconfig import load_aws_config
from stager.crt import chain_provider
from stager.locations import S3Url
from stager.settings import Settings
from tests.helpers import http_stand_in

ROLE = "lab-node"


class Metadata:
    """What the stand-in saw, and the keys it hands out (``None``: no role attached)."""

    def __init__(self, keys: tuple[str, str] | None, lifetime_s: float) -> None:
        self.keys = keys
        self.lifetime_s = lifetime_s
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, token


@contextlib.contextmanager
def metadata_service(metadata: Metadata) -> Iterator[str]:
    class Imds(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            metadata.requests.append(("PUT", self.path, None))
            ttl = self.headers.get("x-aws-ec2-metadata-token-ttl-seconds")
            self._answer(200, b"imds-token") if ttl else self._answer(400)

        def do_GET(self) -> None:
            token = self.headers.get("x-aws-ec2-metadata-token")
            metadata.requests.append(("GET", self.path, token))
            base = "/latest/meta-data/iam/security-credentials/"
            if token != "imds-token":
                self._answer(401)
            elif self.path == "/latest/meta-data/placement/region":
                self._answer(200, b"eu-north-1")
            elif metadata.keys is None or not self.path.startswith(base):
                self._answer(404)
            elif self.path == base:
                self._answer(200, ROLE.encode())
            elif self.path == base + ROLE:
                expires = datetime.now(UTC) + timedelta(seconds=metadata.lifetime_s)
                access, secret = metadata.keys
                body = {
                    "Code": "Success",
                    "AccessKeyId": access,
                    "SecretAccessKey": secret,
                    "Token": "session-token",
                    "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                self._answer(200, json.dumps(body).encode())
            else:
                self._answer(404)

        def log_message(self, *args: Any) -> None:
            pass

    with http_stand_in(Imds) as url:
        yield url


def on_ec2(endpoint: str, tmp_path: Path) -> dict[str, str]:
    """A node's environment: no keys, no profile files; the metadata service at ``endpoint``."""
    return {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint,
    }


def test_the_native_chain_takes_the_instance_roles_keys_and_refreshes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, with the native client's own chain: the test S3 server knows no
    # session tokens, so keys from a role cannot sign requests to it.
    metadata = Metadata(("AKIA-ROLE", "role-secret"), lifetime_s=1)  # expired at every use
    with metadata_service(metadata) as endpoint:
        for name, value in on_ec2(endpoint, tmp_path).items():
            monkeypatch.setenv(name, value)
        provider = chain_provider(None)
        first = provider.get_credentials().result(timeout=10)
        time.sleep(1.5)
        again = provider.get_credentials().result(timeout=10)
    assert (first.access_key_id, first.secret_access_key, first.session_token) == (
        "AKIA-ROLE",
        "role-secret",
        "session-token",
    )
    assert again.access_key_id == "AKIA-ROLE"
    assert metadata.requests[0][:2] == ("PUT", "/latest/api/token")  # IMDSv2: a token first
    fetched = [r for r in metadata.requests if r[1].endswith("/" + ROLE)]
    assert len(fetched) == 2  # the expired keys were fetched again, not reused
    assert all(token == "imds-token" for method, _, token in metadata.requests if method == "GET")


def test_a_node_without_a_role_says_so_in_one_line(
    run_cli: Any, prefix: S3Url, tmp_path: Path
) -> None:
    with metadata_service(Metadata(None, lifetime_s=3600)) as endpoint:
        done = run_cli(
            "pull", str(prefix.child("x")), str(tmp_path / "x"), env=on_ec2(endpoint, tmp_path)
        )
    assert done.returncode == 4, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "no AWS credentials were found" in line


def test_the_region_comes_from_the_metadata_service_when_nothing_names_one(
    tmp_path: Path,
) -> None:
    metadata = Metadata(None, lifetime_s=3600)
    with metadata_service(metadata) as endpoint:
        env = on_ec2(endpoint, tmp_path)
        aws = load_aws_config(Settings(), env)
        named = load_aws_config(Settings(), {**env, "AWS_REGION": "us-west-2"})
        off = load_aws_config(Settings(), {**env, "AWS_EC2_METADATA_DISABLED": "true"})
    assert aws.region == "eu-north-1" and aws.endpoint == "https://s3.eu-north-1.amazonaws.com"
    assert named.region == "us-west-2" and off.region is None
    assert [r[:2] for r in metadata.requests] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/placement/region"),
    ]  # asked once, with a token: not when a region is named nor when it is turned off
