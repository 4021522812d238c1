"""The node file service: real HTTP, a real cache, real S3 for the write-behind."""

from __future__ import annotations

import http.client
import io
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.nodes import fsd_serve_command
from fsd.cache import NodeCache
from fsd.outbox import Outbox, OutboxCounts, WriteBehind, outbox_path
from fsd.peerauth import HEADER, Signer
from fsd.peerclient import PeerClient, PeerLimits
from fsd.service import NodeService
from stager.digest import Digest, HashingWriter, digest_bytes
from stager.errors import AccessDeniedError, NotFoundError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server, free_ports
from tests.helpers import count_requests
from worker_hooks.task.result import FileRecord, Persist
from worker_hooks.wrap.outputs import FoundOutput
from worker_hooks.wrap.stageout import NodeKeeping, upload_outputs

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
    # The outbox records the write once the upload has returned: a moment after S3 has it.
    while service.outbox.counts().written == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.outbox.counts() == OutboxCounts(pending=0, written=1, lost=0)


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


def test_two_holders_writing_one_output_behind_cost_one_extra_request(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    data = b"mirrored output " * 50_000
    url = prefix.child("twice.bin")
    writers = []
    for name in ("producer", "mirror"):
        cache = open_cache(tmp_path / name)
        digest = put_entry(cache, data)
        outbox = Outbox(outbox_path(cache.root))
        outbox.add(digest, len(data), url, "task-key")
        writers.append((WriteBehind(outbox, cache, store), outbox))
    requests = count_requests(store)
    first, first_box = writers[0]
    first.write_one(first_box.due()[0])
    after_first = sum(requests.values())
    second, second_box = writers[1]
    second.write_one(second_box.due()[0])
    assert sum(requests.values()) - after_first == 1  # its HEAD found the bytes there
    assert requests["HeadObject"] == 2 and first_box.counts().written == 1
    assert second_box.counts().written == 1
    info = store.head(url)
    assert info is not None and info.digest == digest_bytes(data)


def stage_out(
    tmp_path: Path, store: ObjectStore, url: S3Url, persist: Persist, keeping: NodeKeeping | None
) -> tuple[FileRecord, NodeCache]:
    cache = open_cache(tmp_path / "producer")
    output = tmp_path / "sandbox" / "out.bin"
    output.parent.mkdir()
    output.write_bytes(b"output bytes " * 10_000)
    found = FoundOutput(output, "out.bin", url, output.stat().st_size, persist)
    (record,) = upload_outputs([found], cache=cache, store=store, task="k", keeping=keeping)
    return record, cache


def test_a_mirror_output_with_no_live_peer_goes_to_s3_before_done(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    client = PeerClient(TOKEN, limits=PeerLimits(connect_timeout_s=1.0))
    outbox = Outbox(tmp_path / "outbox.sqlite")
    url = prefix.child("mirrored.bin")
    record, _ = stage_out(
        tmp_path, store, url, Persist.MIRROR, NodeKeeping(client, (dead,), outbox)
    )
    assert record.kept is Persist.S3  # the durable fall-back, recorded as such
    info = store.head(url)
    assert info is not None and info.digest == record.digest
    assert client.take_bad() == [dead] and outbox.counts().pending == 0


def test_a_local_output_without_a_file_service_goes_to_s3(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    url = prefix.child("local.bin")
    record, _ = stage_out(tmp_path, store, url, Persist.LOCAL, None)
    assert record.kept is Persist.S3 and store.head(url) is not None


def test_a_local_output_stays_in_the_cache_and_out_of_s3(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    url = prefix.child("kept.bin")
    keeping = NodeKeeping(PeerClient(TOKEN), (), Outbox(tmp_path / "outbox.sqlite"))
    record, cache = stage_out(tmp_path, store, url, Persist.LOCAL, keeping)
    assert record.kept is Persist.LOCAL and store.head(url) is None
    assert cache.lookup(record.digest) is not None


def test_stager_fsd_serve_runs_until_sigterm_and_bad_flags_are_one_line(
    tmp_path: Path, run_cli: Any, s3_server: LocalS3Server
) -> None:
    env = {**os.environ, **s3_server.env(), "STAGER_DISPATCHER_TOKEN": TOKEN}
    process = subprocess.Popen(
        fsd_serve_command("127.0.0.1:0", tmp_path / "c"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        address = first.split(" on ", 1)[1].split(",", 1)[0]
        assert PeerClient(TOKEN).status(address).entries == 0
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped; served" in rest and TOKEN not in first + rest

    taken = socket.create_server(("127.0.0.1", 0))
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    for listen, code in ((busy, 5), ("nonsense", 2)):
        flags = ("--listen", listen, "--cache-dir", str(tmp_path / "c"))
        ran = run_cli("fsd", "serve", *flags, env={"STAGER_DISPATCHER_TOKEN": TOKEN})
        assert ran.returncode == code and len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    taken.close()
