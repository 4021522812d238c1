"""S3 over https with a private CA: both clients trust exactly what they are told to."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stager.digest import digest_bytes
from stager.errors import UnreachableError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from stager.settings import TransferClient
from tests.helpers import make_certificate, write_random

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    base = tmp_path_factory.mktemp("tls-s3")
    with LocalS3Server(base / "s3", tls=make_certificate(base / "ca")) as server:
        server.client().create_bucket(Bucket="tls")
        yield server


@pytest.mark.parametrize("client", ["crt", "s3transfer"])
def test_round_trip_over_https_with_the_endpoints_ca(
    tmp_path: Path, tls_server: LocalS3Server, client: str
) -> None:
    settings = tls_server.settings(
        transfer_client=TransferClient(client),
        part_size_bytes=5 << 20,
        multipart_threshold_bytes=5 << 20,
    )
    assert settings.endpoint_url is not None and settings.endpoint_url.startswith("https://")
    data = write_random(tmp_path / "f.bin", (6 << 20) + 3)  # multipart
    url = S3Url("tls", f"{client}/f.bin")
    with ObjectStore(settings, credentials=tls_server.credentials) as store:
        store.upload_file(tmp_path / "f.bin", url, digest=digest_bytes(data), size=len(data))
        received = store.download_file(url, tmp_path / "copy.bin")
        # Small objects, sent from this thread over one kept-alive TLS connection.
        small = {S3Url("tls", f"{client}/small-{n}"): os.urandom(1000 + n) for n in range(3)}
        for small_url, small_data in small.items():
            store.put_bytes(small_url, small_data, create_only=True)
        got = {small_url: store.get_bytes(small_url) for small_url in small}
    assert (received.digest, received.verified) == (digest_bytes(data), True)
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert got == small


@pytest.mark.parametrize("client", ["crt", "s3transfer"])
def test_an_untrusted_certificate_is_a_clear_error(
    tmp_path: Path, tls_server: LocalS3Server, client: str
) -> None:
    other_ca = make_certificate(tmp_path / "other")
    settings = tls_server.settings(
        transfer_client=TransferClient(client), ca_bundle=other_ca.cert_file, max_attempts=1
    )
    with (
        ObjectStore(settings, credentials=tls_server.credentials) as store,
        pytest.raises(UnreachableError, match="TLS with the S3 endpoint failed") as caught,
    ):
        store.put_bytes(S3Url("tls", f"{client}/never"), b"x")
    assert "ca_bundle" in caught.value.one_line()


def test_the_cli_names_a_missing_ca_bundle(tls_server: LocalS3Server, tmp_path: Path) -> None:
    env = {**os.environ, **tls_server.env(), "STAGER_CA_BUNDLE": str(tmp_path / "none.pem")}
    done = subprocess.run(
        [sys.executable, "-m", "stager", "pull", "s3://tls/x", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("stager: error: ") and "ca_bundle" in line
    assert f"{tmp_path / 'none.pem'} is not a readable file" in line
    assert "Traceback" not in done.stderr
