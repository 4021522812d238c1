"""What real buckets need on every write and request (storage class, server-side
encryption, requester pays), sent by both byte movers: recorded by a proxy in front of
the real server, which must still accept every request."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from bench.faultproxy import FaultProxy, Faults
from stager.digest import digest_bytes
from stager.errors import ConfigError, StagerError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.settings import ServerSideEncryption, Settings, TransferClient, load_settings

MiB = 1024 * 1024


@pytest.fixture
def recorder(s3_server: Any) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_server.endpoint_url, Faults(error_rate=0, reset_rate=0, delay_rate=0))
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("client", list(TransferClient), ids=lambda c: c.value)
def test_both_movers_write_in_the_storage_class_and_pay_as_requester(
    s3_server: Any,
    recorder: FaultProxy,
    raw_client: Any,
    prefix: S3Url,
    tmp_path: Path,
    client: TransferClient,
) -> None:
    settings = s3_server.settings(
        endpoint_url=recorder.endpoint,
        transfer_client=client,
        multipart_threshold_bytes=5 * MiB,
        part_size_bytes=5 * MiB,
        storage_class="STANDARD_IA",
        requester_pays=True,
    )
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))
    with ObjectStore(settings, credentials=s3_server.credentials) as store:
        store.put_bytes(prefix.child("small"), b"small")
        store.upload_file(
            big, prefix.child("big"), digest=digest_bytes(big.read_bytes()), size=11 * MiB
        )
        assert store.get_bytes(prefix.child("small")) == b"small"
        assert sorted(item.url.key for item in store.list(prefix)) == [
            prefix.child("big").key,
            prefix.child("small").key,
        ]
    for name in ("small", "big"):  # as the server stored them, multipart included
        head = raw_client.head_object(Bucket=prefix.bucket, Key=prefix.child(name).key)
        assert head["StorageClass"] == "STANDARD_IA"
    objects = [headers for _, path, headers in recorder.seen if prefix.key in unquote(path)]
    assert len(objects) >= 5  # two writes (one in parts), a read, a listing
    assert all(headers.get("x-amz-request-payer") == "requester" for headers in objects)


@pytest.mark.parametrize("client", list(TransferClient), ids=lambda c: c.value)
def test_both_movers_ask_for_server_side_encryption_with_the_key_given(
    s3_server: Any, recorder: FaultProxy, prefix: S3Url, client: TransferClient
) -> None:
    settings = s3_server.settings(
        endpoint_url=recorder.endpoint,
        transfer_client=client,
        sse=ServerSideEncryption.KMS,
        sse_kms_key_id="alias/lab",
        max_attempts=1,
    )
    store = ObjectStore(settings, credentials=s3_server.credentials)
    with store, pytest.raises(StagerError):  # the test server has no KMS; AWS would take it
        store.put_bytes(prefix.child("secret"), b"secret")
    puts = [headers for method, _, headers in recorder.seen if method == "PUT"]
    assert puts  # (the native client tries a server error again, at the connection level)
    for headers in puts:
        assert headers["x-amz-server-side-encryption"] == "aws:kms"
        assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/lab"


def test_a_kms_key_needs_kms_and_a_storage_class_is_checked() -> None:
    with pytest.raises(ConfigError, match="sse is not aws:kms"):
        Settings(sse_kms_key_id="alias/lab")
    with pytest.raises(ConfigError, match="not a storage class name"):
        Settings(storage_class="standard ia")
    chosen = load_settings(environ={"STAGER_SSE": "aws:KMS", "STAGER_SSE_KMS_KEY_ID": "alias/lab"})
    assert chosen.sse is ServerSideEncryption.KMS and chosen.sse_kms_key_id == "alias/lab"
