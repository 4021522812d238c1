"""Small helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stager.atomic import TEMP_MARKER
from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.objectinfo import DIGEST_METADATA_KEY
from stager.objectstore import ObjectStore
from stager.s3server import TlsFiles


def write_random(path: Path, size: int) -> bytes:
    """Write ``size`` random bytes to ``path`` (creating parents); return them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def damage(path: Path) -> None:
    """Change the first byte of ``path`` in place (to another value, whatever it was)."""
    with path.open("r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))


def files_under(root: Path) -> list[Path]:
    """Every file below ``root``, temp files included, sorted."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


def temp_files_under(root: Path) -> list[Path]:
    return [p for p in files_under(root) if TEMP_MARKER in p.name]


def put_tampered(raw_client: Any, url: S3Url, body: bytes, claimed: bytes) -> None:
    """Store ``body`` under ``url`` with the digest of ``claimed`` in its metadata."""
    raw_client.put_object(
        Bucket=url.bucket,
        Key=url.key,
        Body=body,
        Metadata={DIGEST_METADATA_KEY: str(digest_bytes(claimed))},
    )


def count_requests(store: ObjectStore) -> Counter[str]:
    """The store's live count of S3 requests by operation, from zero now."""
    store.requests.clear()
    return store.requests


def make_certificate(directory: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 and its key; skips the test without openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    made = subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(files.key_file), "-out", str(files.cert_file)),
        ],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.decode()[-200:]}")
    return files


@contextlib.contextmanager
def http_stand_in(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on a free loopback port answering with ``handler``; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
