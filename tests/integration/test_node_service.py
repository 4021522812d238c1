"""The node file service: real HTTP, a real cache, real S3 for the write-behind."""

from __future__ import annotations

import http.client
import io
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.cache import NodeCache
from fsd.outbox import Outbox, outbox_path
from fsd.peerauth import HEADER, Signer
from fsd.peerclient import PeerClient
from fsd.service import NodeService
from stager.digest import Digest, HashingWriter, digest_bytes
from stager.errors import AccessDeniedError, NotFoundError
from stager.locations import S3Url
from stager.objectstore import ObjectStore

TOKEN = "node-service-test-token-0123456789"
GIB = 1024**3


def open_cache(root: Path) -> NodeCache:
    root.mkdir(parents=True, exist_ok=True)
    return NodeCache(root, quota_bytes=GIB)


@pytest.fixture
def node(tmp_path: Path, store: ObjectStore) -> Iterator[tuple[NodeService, NodeCache]]:
    cache = open_cache(tmp_path / "node-a")
    service = NodeService(cache, store, TOKEN, "127.0.0.1:0")
    service.start()
    try:
        yield service, cache
    finally:
        service.stop()


def put_entry(cache: NodeCache, data: bytes) -> Digest:
    entry = cache.ensure(None, len(data), lambda w: w.write(data), flight_key=str(len(data)))
    return Digest.from_hex(entry.name)


def raw_get(address: str, path: str, header: str | None) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    if header is not None:
        connection.putheader(HEADER, header)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def test_a_peer_fetches_an_entry_by_digest(node: tuple[NodeService, NodeCache]) -> None:
    service, cache = node
    data = b"reference bytes " * 100_000
    digest = put_entry(cache, data)
    received = io.BytesIO()
    writer = HashingWriter(received)
    moved = PeerClient(TOKEN).fetch(service.address, digest, writer)
    assert moved == len(data) and received.getvalue() == data
    assert writer.hasher.digest == digest
    with pytest.raises(NotFoundError):
        PeerClient(TOKEN).fetch(service.address, digest_bytes(b"not held"), io.BytesIO())


def test_a_range_request_gets_part_of_an_entry(node: tuple[NodeService, NodeCache]) -> None:
    service, cache = node
    digest = put_entry(cache, bytes(range(256)) * 1000)
    host, port = service.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    path = f"/v1/entries/{digest}"
    connection.putrequest("GET", path)
    connection.putheader(HEADER, Signer(TOKEN).header("GET", path, str(digest)))
    connection.putheader("Range", "bytes=10-19")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 206
    assert response.read() == bytes(range(10, 20))


def test_refusals_look_the_same_whether_or_not_the_digest_is_held(
    node: tuple[NodeService, NodeCache],
) -> None:
    service, cache = node
    held = put_entry(cache, b"secret payload" * 1000)
    missing = digest_bytes(b"nothing")
    answers = set()
    for digest in (held, missing):
        path = f"/v1/entries/{digest}"
        good = Signer(TOKEN).header("GET", path, str(digest))
        stale = Signer(TOKEN, clock=lambda: time.time() - 3600).header("GET", path, str(digest))
        wrong = Signer("some-other-cluster-token-xyz").header("GET", path, str(digest))
        for header in (None, "Bearer " + TOKEN, wrong, stale, good[:-2] + "zz"):
            answers.add(raw_get(service.address, path, header))
        status, _ = raw_get(service.address, path, good)
        assert status == (200 if digest == held else 404)
        assert raw_get(service.address, path, good)[0] == 401  # the same header, replayed
    assert len(answers) == 1 and next(iter(answers))[0] == 401
    assert TOKEN.encode() not in next(iter(answers))[1]
    with pytest.raises(AccessDeniedError):
        PeerClient("some-other-cluster-token-xyz").fetch(service.address, held, io.BytesIO())


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2Fetc%2Fpasswd", "xxh3-128:..", "VERSION", "xxh3-128:" + "0" * 31 + "%2F", "%00"],
)
def test_what_is_not_a_digest_never_becomes_a_path(
    node: tuple[NodeService, NodeCache], name: str
) -> None:
    service, _ = node
    path = f"/v1/entries/{name}"
    signed = Signer(TOKEN).header("GET", path, urllib.parse.unquote(name))  # a token holder
    status, body = raw_get(service.address, path, signed)
    assert status in (400, 404) and b"root:" not in body


def test_a_mirror_is_verified_then_written_behind_to_s3(
    node: tuple[NodeService, NodeCache], tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    service, cache = node
    source = open_cache(tmp_path / "producer")
    data = b"an output " * 300_000
    digest = put_entry(source, data)
    entry = source.entry_path(digest)
    url = prefix.child("outputs/mirrored.bin")
    PeerClient(TOKEN).mirror(service.address, entry, digest, len(data), write_behind=url, task="k")
    assert cache.lookup(digest) is not None
    deadline = time.monotonic() + 20
    while (info := store.head(url)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info is not None and info.digest == digest and info.size == len(data)
    assert service.outbox.counts().written == 1


def test_a_mirror_with_wrong_bytes_is_refused_and_not_kept(
    node: tuple[NodeService, NodeCache], tmp_path: Path, prefix: S3Url
) -> None:
    service, cache = node
    source = tmp_path / "claimed.bin"
    source.write_bytes(b"B" * 100_000)
    claimed = digest_bytes(b"A" * 100_000)
    with pytest.raises(Exception, match="damaged"):
        PeerClient(TOKEN).mirror(
            service.address, source, claimed, 100_000, write_behind=prefix.child("x"), task="k"
        )
    assert cache.lookup(claimed) is None
    assert service.outbox.counts().pending == 0


def test_the_outbox_resumes_after_a_restart(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    cache = open_cache(tmp_path / "node")
    data = b"written behind after a restart " * 10_000
    digest = put_entry(cache, data)
    url = prefix.child("resumed.bin")
    outbox = Outbox(outbox_path(cache.root))
    outbox.add(digest, len(data), url, "task-key")
    outbox.close()  # the process that promised it dies here
    assert store.head(url) is None
    service = NodeService(cache, store, TOKEN, "127.0.0.1:0")
    service.start()
    try:
        deadline = time.monotonic() + 20
        while store.head(url) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        service.stop()
    info = store.head(url)
    assert info is not None and info.digest == digest
