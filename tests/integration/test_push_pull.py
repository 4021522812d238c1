"""Round trips through the real embedded S3 server."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest

from stager.awsconfig import Credentials
from stager.digest import HashingWriter, digest_bytes
from stager.digestcache import DigestCache
from stager.errors import (
    AccessDeniedError,
    IntegrityError,
    NotFoundError,
    PreconditionFailedError,
    StagerError,
)
from stager.locations import S3Url
from stager.manifest import Manifest
from stager.objectinfo import DIGEST_METADATA_KEY, ObjectInfo, check_received
from stager.objectstore import ObjectStore
from stager.pull import pull
from stager.push import push
from stager.settings import TransferClient
from tests.helpers import count_requests, files_under, put_tampered, temp_files_under, write_random

MiB = 1024 * 1024


@pytest.mark.parametrize(
    "size", [0, 1, 100 * 1024, 12 * MiB + 7], ids=["empty", "1B", "100K", "multipart"]
)
def test_round_trip_single_file(
    tmp_path: Path, either_store: ObjectStore, digests: DigestCache, prefix: S3Url, size: int
) -> None:
    store = either_store
    data = write_random(tmp_path / "frontend" / "file.bin", size)
    report = push([str(tmp_path / "frontend" / "file.bin")], prefix, store=store, digests=digests)
    [entry] = report.manifest.entries
    assert (entry.path, entry.size, entry.digest) == ("file.bin", size, digest_bytes(data))
    pulled = pull(
        prefix.child("file.bin"),
        tmp_path / "node" / "copy.bin",
        store=store,
        digests=digests,
        dest_is_dir=False,
    )
    assert (tmp_path / "node" / "copy.bin").read_bytes() == data
    assert [(f.digest, f.verified) for f in pulled.files] == [(digest_bytes(data), True)]


def test_multipart_upload_really_uses_parts(
    tmp_path: Path, either_store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    store = either_store
    write_random(tmp_path / "big.bin", 11 * MiB)
    push([str(tmp_path / "big.bin")], prefix, store=store, digests=digests)
    # A multipart object's ETag ends in "-<number of parts>": 5 MiB parts.
    head = store.client.head_object(Bucket=prefix.bucket, Key=prefix.key + "big.bin")
    assert head["ETag"].strip('"').endswith("-3")
    calls = count_requests(store)
    pull(prefix, tmp_path / "node", store=store, digests=digests, dest_is_dir=True)
    if store.settings.transfer_client is TransferClient.S3TRANSFER:
        assert calls["GetObject"] == 3  # ranged GETs, one per part
    else:  # the native client splits in C: one GetObject call from Python
        assert calls["GetObject"] == 1
    assert (tmp_path / "node" / "big.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()


@pytest.mark.timeout(120)
def test_download_with_many_more_parts_than_the_memory_window(
    tmp_path: Path, settings: Any, s3_server: Any, digests: DigestCache, prefix: S3Url
) -> None:
    """Regression (s3transfer): 8 parts through a window of 2 in-memory chunks must not deadlock."""
    narrow = dataclasses.replace(
        settings, max_concurrency=1, transfer_client=TransferClient.S3TRANSFER
    )
    data = write_random(tmp_path / "many-parts.bin", 40 * MiB)
    with ObjectStore(narrow, credentials=s3_server.credentials) as store:
        push([str(tmp_path / "many-parts.bin")], prefix, store=store, digests=digests)
        pull(prefix, tmp_path / "node", store=store, digests=digests, dest_is_dir=True)
    assert (tmp_path / "node" / "many-parts.bin").read_bytes() == data


def test_tree_of_hundreds_of_files(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    tree = tmp_path / "frontend" / "inputs"
    originals = {
        f"inputs/d{i % 7}/f{i:03d}.dat": write_random(tree / f"d{i % 7}" / f"f{i:03d}.dat", i * 13)
        for i in range(300)
    }
    ref = write_random(tmp_path / "frontend" / "ref.fa", 6 * MiB)
    sources = [str(tree), str(tmp_path / "frontend" / "ref.fa")]
    report = push(sources, prefix, store=store, digests=digests)
    assert report.uploaded_files == 301

    pulled = pull(prefix, tmp_path / "node", store=store, digests=digests, dest_is_dir=True)
    assert len(pulled.files) == 301
    for logical, data in originals.items():
        assert (tmp_path / "node" / logical).read_bytes() == data
    assert (tmp_path / "node" / "ref.fa").read_bytes() == ref
    recorded = {entry.url: entry.digest for entry in report.manifest.entries}
    assert all(recorded[str(f.url)] == f.digest and f.verified for f in pulled.files)


def test_re_push_uploads_nothing_and_re_pull_downloads_nothing(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    for i in range(20):
        write_random(tmp_path / "data" / f"f{i}", 1000 + i)
    write_random(tmp_path / "data" / "big", 6 * MiB)
    push([str(tmp_path / "data")], prefix, store=store, digests=digests)
    pull(prefix, tmp_path / "node", store=store, digests=digests, dest_is_dir=True)

    calls = count_requests(store)
    again = push([str(tmp_path / "data")], prefix, store=store, digests=digests)
    assert (again.uploaded_files, again.skipped_files) == (0, 21)
    assert calls["PutObject"] == 1  # only the new manifest
    assert calls["UploadPart"] == 0 and calls["CreateMultipartUpload"] == 0

    calls.clear()
    re_pulled = pull(prefix, tmp_path / "node", store=store, digests=digests, dest_is_dir=True)
    assert re_pulled.skipped_files == 21
    assert calls["GetObject"] == 0


def test_a_changed_file_is_pushed_again(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"version 1")
    push([str(path)], prefix, store=store, digests=digests)
    path.write_bytes(b"version 2")  # same size: only the digest tells them apart
    report = push([str(path)], prefix, store=store, digests=digests)
    assert report.uploaded_files == 1
    assert store.get_bytes(prefix.child("f.txt")) == b"version 2"


def test_manifest_is_stored_create_only_and_readable(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    write_random(tmp_path / "a", 10)
    report = push([str(tmp_path / "a")], prefix, store=store, digests=digests)
    assert Manifest.from_json(store.get_bytes(report.manifest_url)) == report.manifest


@pytest.mark.parametrize("size", [10, 12 * MiB + 7], ids=["small", "multipart"])
def test_object_whose_bytes_do_not_match_its_digest_is_refused(
    tmp_path: Path,
    either_store: ObjectStore,
    digests: DigestCache,
    prefix: S3Url,
    raw_client: Any,
    size: int,
) -> None:
    # A large one is written to its temp file by the client itself, then hashed.
    store = either_store
    evil = os.urandom(size)
    claimed = evil[:-1] + bytes([evil[-1] ^ 0xFF])  # differs, whatever the last byte is
    put_tampered(raw_client, prefix.child("tampered.bin"), evil, claimed=claimed)
    dest = tmp_path / "node"
    with pytest.raises(IntegrityError, match="does not match"):
        pull(prefix, dest, store=store, digests=digests, dest_is_dir=True)
    assert files_under(dest) == []
    assert temp_files_under(tmp_path) == []


def test_stager_objects_read_back_with_plain_boto3(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url, raw_client: Any
) -> None:
    data = write_random(tmp_path / "x.bin", 7 * MiB)
    push([str(tmp_path / "x.bin")], prefix, store=store, digests=digests)
    response = raw_client.get_object(Bucket=prefix.bucket, Key=prefix.child("x.bin").key)
    assert response["Body"].read() == data
    assert response["Metadata"][DIGEST_METADATA_KEY] == str(digest_bytes(data))


def test_foreign_objects_pull_unverified_with_their_digest(
    tmp_path: Path, either_store: ObjectStore, digests: DigestCache, prefix: S3Url, raw_client: Any
) -> None:
    store = either_store
    data = b"written by another tool" * 1000
    raw_client.put_object(Bucket=prefix.bucket, Key=prefix.child("foreign.txt").key, Body=data)
    report = pull(prefix, tmp_path / "node", store=store, digests=digests, dest_is_dir=True)
    [file] = report.files
    assert (file.verified, file.digest) == (False, digest_bytes(data))
    assert report.unverified == (file,)
    assert (tmp_path / "node" / "foreign.txt").read_bytes() == data


def test_push_from_an_fsspec_url_spools_and_cleans_up(
    tmp_path: Path, store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    memory = fsspec.filesystem("memory")
    root = f"/{prefix.key.rstrip('/')}"
    payloads = {f"{root}/tree/a.txt": b"alpha", f"{root}/tree/sub/b.txt": b"beta" * 1000}
    for path, data in payloads.items():
        memory.pipe(path, data)
    report = push([f"memory://{root}/tree"], prefix, store=store, digests=digests)
    assert sorted((e.path, e.digest) for e in report.manifest.entries) == [
        ("tree/a.txt", digest_bytes(b"alpha")),
        ("tree/sub/b.txt", digest_bytes(b"beta" * 1000)),
    ]
    assert store.get_bytes(prefix.child("tree/sub/b.txt")) == b"beta" * 1000
    assert files_under(store.settings.state_dir / "spool") == []


def test_head_tells_size_digest_and_etag_or_none(
    either_store: ObjectStore, prefix: S3Url, raw_client: Any
) -> None:
    url = prefix.child("dir/heads up.bin")
    digest = either_store.put_bytes(url, b"x" * 1234)
    info = either_store.head(url)
    raw = raw_client.head_object(Bucket=url.bucket, Key=url.key)
    assert info == ObjectInfo(url, 1234, digest, raw["ETag"])
    assert either_store.head(prefix.child("dir/missing.bin")) is None
    with pytest.raises(NotFoundError, match="bucket"):
        either_store.head(S3Url("no-such-bucket-here", "key"))


def test_create_only_writes_never_replace(either_store: ObjectStore, prefix: S3Url) -> None:
    store = either_store
    url = prefix.child("result.json")
    store.put_bytes(url, b"accepted", create_only=True)
    with pytest.raises(PreconditionFailedError):
        store.put_bytes(url, b"late duplicate", create_only=True)
    assert store.get_bytes(url) == b"accepted"


@pytest.mark.parametrize(
    "key",
    ["with space/ä ö.txt", "plus+eq=amp&pct%41.bin", "tilde~/(paren)*star'quote!.txt"],
    ids=["space-unicode", "plus-eq-amp-pct", "punctuation"],
)
def test_awkward_key_names_round_trip(
    tmp_path: Path, either_store: ObjectStore, prefix: S3Url, key: str, raw_client: Any
) -> None:
    """Keys are encoded and signed right by both clients."""
    data = write_random(tmp_path / "src.bin", 4096)
    url = prefix.child(key)
    either_store.upload_file(tmp_path / "src.bin", url, digest=digest_bytes(data), size=len(data))
    assert raw_client.get_object(Bucket=url.bucket, Key=url.key)["Body"].read() == data
    received = either_store.download_file(url, tmp_path / "copy.bin")
    assert (received.digest, received.verified) == (digest_bytes(data), True)
    assert (tmp_path / "copy.bin").read_bytes() == data


def test_an_empty_object_of_unknown_size_reads_back(
    either_store: ObjectStore, prefix: S3Url
) -> None:
    url = prefix.child("empty")
    either_store.put_bytes(url, b"")
    writer = HashingWriter(io.BytesIO())
    info = either_store.read_into(url, writer)  # no size known: a ranged GET first
    check_received(info, writer.hasher)
    assert (info.size, info.digest) == (0, digest_bytes(b""))


def test_a_size_hint_only_chooses_how_an_object_is_read(
    either_store: ObjectStore, prefix: S3Url, raw_client: Any
) -> None:
    """A hint (a spec's size) that is right sends one small request; a wrong one
    still reads the whole object, and what arrived is what is described."""
    small, large = os.urandom(1024), os.urandom(3 * 1024 * 1024 + 5)
    for name, data in (("small", small), ("large", large)):  # no stager metadata
        raw_client.put_object(Bucket=prefix.bucket, Key=f"{prefix.key}{name}", Body=data)
    for name, data, hint in (("small", small, 1024), ("large", large, 10)):
        target, seen = io.BytesIO(), []
        writer = HashingWriter(target)
        info = either_store.read_into(
            prefix.child(name), writer, on_bytes=seen.append, size_hint=hint
        )
        check_received(info, writer.hasher)
        assert info.size == len(data) and target.getvalue() == data
        assert sum(seen) == len(data)
    with pytest.raises(NotFoundError):
        either_store.read_into(prefix.child("gone"), HashingWriter(io.BytesIO()), size_hint=5)


def test_errors_of_either_client_are_named(
    either_store: ObjectStore, s3_server: Any, prefix: S3Url
) -> None:
    with pytest.raises(NotFoundError):
        either_store.read_into(prefix.child("missing"), HashingWriter(io.BytesIO()))
    either_store.put_bytes(prefix.child("present"), b"x")
    wrong = Credentials(s3_server.credentials.access_key, "not-the-secret")
    intruder = ObjectStore(either_store.settings, credentials=wrong)
    with intruder, pytest.raises(AccessDeniedError) as caught:
        intruder.read_into(prefix.child("present"), HashingWriter(io.BytesIO()))
    assert "not-the-secret" not in str(caught.value)


def test_a_small_object_whose_bytes_do_not_match_is_refused(
    either_store: ObjectStore, prefix: S3Url, raw_client: Any
) -> None:
    put_tampered(raw_client, prefix.child("note.json"), b"{}", claimed=b"{ }")
    with pytest.raises(IntegrityError, match="does not match"):
        either_store.get_bytes(prefix.child("note.json"))
    with pytest.raises(NotFoundError):
        either_store.get_bytes(prefix.child("absent.json"))


def test_closed_stores_release_their_native_client_threads(
    settings: Any, s3_server: Any, prefix: S3Url
) -> None:
    def os_threads() -> int:
        return len(os.listdir(f"/proc/{os.getpid()}/task"))

    url = prefix.child("probe")
    with ObjectStore(settings, credentials=s3_server.credentials) as first:
        first.put_bytes(url, b"probe")
    time.sleep(0.5)
    before = os_threads()
    for _ in range(8):  # each store starts its own native client threads
        with ObjectStore(settings, credentials=s3_server.credentials) as store:
            assert store.get_bytes(url) == b"probe"
    deadline = time.monotonic() + 10
    while os_threads() > before + 4:
        assert time.monotonic() < deadline, f"{os_threads() - before} threads outlived their stores"
        time.sleep(0.1)


def test_no_credentials_at_all_is_named_by_either_client(
    either_store: ObjectStore, prefix: S3Url, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    either_store.put_bytes(prefix.child("present"), b"x")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = ObjectStore(either_store.settings)
    with anonymous, pytest.raises(AccessDeniedError, match="no AWS credentials"):
        anonymous.get_bytes(prefix.child("present"))


def test_pull_syncs_files_only_when_asked(
    tmp_path: Path,
    either_store: ObjectStore,
    digests: DigestCache,
    prefix: S3Url,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(3):
        either_store.put_bytes(prefix.child(f"f{n}"), os.urandom(1000 * n))
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    plain = pull(prefix, tmp_path / "plain", store=either_store, digests=digests, dest_is_dir=True)
    assert len(plain.files) == 3 and synced == []  # whole or absent, left to the OS to sync
    pull(
        prefix,
        tmp_path / "synced",
        store=either_store,
        digests=digests,
        dest_is_dir=True,
        fsync=True,
    )
    assert len(synced) == 6  # each file, then its directory


def test_one_bad_object_among_many_small_ones_fails_alone(
    tmp_path: Path, either_store: ObjectStore, digests: DigestCache, prefix: S3Url, raw_client: Any
) -> None:
    # Small new files are pulled in batches: the bad one must not take its batch down.
    good = {f"ok/{n:03d} ü.txt": f"object {n}".encode() for n in range(150)}
    good["ok/empty"] = b""
    for name, body in good.items():
        raw_client.put_object(Bucket=prefix.bucket, Key=prefix.child(name).key, Body=body)
    put_tampered(raw_client, prefix.child("bad.bin"), b"rotten", claimed=b"honest")
    calls = count_requests(either_store)
    dest = tmp_path / "node"
    with pytest.raises(IntegrityError, match="does not match"):
        pull(prefix, dest, store=either_store, digests=digests, dest_is_dir=True)
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in files_under(dest)} == good
    assert temp_files_under(tmp_path) == []
    assert calls["GetObject"] == len(good) + 3  # the bad one: in its batch, then twice alone


def test_a_file_the_store_refuses_fails_alone_among_many_small_ones(
    tmp_path: Path, either_store: ObjectStore, digests: DigestCache, prefix: S3Url
) -> None:
    # Small new files are pushed in batches: one refused PUT must not take its batch down.
    tree = tmp_path / "inputs"
    written = {
        f"inputs/f{n:03d} ü.txt": write_random(tree / f"f{n:03d} ü.txt", n) for n in range(140)
    }
    deep = tree.joinpath(*["d" * 250] * 5)  # its key is longer than S3 takes (1,024 bytes)
    write_random(deep / "x", 10)
    calls = count_requests(either_store)
    with pytest.raises(StagerError, match="too long"):
        push([str(tree)], prefix, store=either_store, digests=digests)
    assert calls["PutObject"] == len(written) + 1  # no manifest: the push did not finish
    stored = {item.url.key.removeprefix(prefix.key) for item in either_store.list(prefix)}
    assert stored == set(written)
    for name, data in written.items():
        assert either_store.get_bytes(prefix.child(name)) == data
