"""botocore and s3transfer: the session, the client, and the byte mover on them.

The other :class:`~stager.movers.ByteMover` (``transfer_client =
"s3transfer"``), and what a store using the native client falls back on for
what only botocore provides (bucket creation, incomplete uploads, SSO
logins, FIPS endpoints). Imported only then: botocore takes ~0.3 s to load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.configprovider import ConfiguredEndpointProvider
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from stager.awsconfig import Credentials
from stager.digest import Digest, HashingWriter
from stager.errors import PreconditionFailedError, StagerError
from stager.locations import S3Url
from stager.movers import ProgressCallback, Read, ReadOutcome, Write, WriteOutcome
from stager.objectinfo import (
    DIGEST_METADATA_KEY,
    GENERATION_METADATA_KEY,
    TASK_METADATA_KEY,
    Listed,
    ObjectInfo,
    WriteCondition,
    recorded_digest,
)
from stager.parallel import run_all
from stager.s3errors import translate, translating
from stager.settings import Settings


def make_session(settings: Settings, credentials: Credentials | None = None) -> Any:
    """A boto3 session for ``settings``; without ``credentials``, keys come from the AWS chain."""
    keys = (
        {
            "aws_access_key_id": credentials.access_key,
            "aws_secret_access_key": credentials.secret_key,
        }
        if credentials
        else {}
    )
    try:
        return boto3.session.Session(
            profile_name=settings.profile, region_name=settings.region, **keys
        )
    except BotoCoreError as exc:
        raise translate(exc, "the AWS configuration", "load") from exc


def make_client(
    settings: Settings, credentials: Credentials | None = None, *, session: Any = None
) -> Any:
    """A boto3 S3 client configured from ``settings`` (standard retries, bounded)."""
    session = session or make_session(settings, credentials)
    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.max_concurrency + settings.files_in_flight,
        # Integrity is ours (XXH3 on every hop); a CRC on every upload would
        # only cost CPU. Response validation stays at botocore's default:
        # "when_required" moves s3transfer 0.19 onto a download path that
        # deadlocks non-seekable targets with more parts than its memory
        # window (see tests/integration/test_push_pull.py).
        request_checksum_calculation="when_required",
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    verify = str(settings.ca_bundle) if settings.ca_bundle else None  # None: the AWS chain's
    client = session.client("s3", endpoint_url=settings.endpoint_url, config=config, verify=verify)
    _add_write_options(client, settings)
    return client


# Operations that take RequestPayer, of those stager sends (s3transfer's included).
_PAYING_OPERATIONS = (
    "GetObject",
    "HeadObject",
    "PutObject",
    "DeleteObject",
    "ListObjectsV2",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
)


def _add_write_options(client: Any, settings: Settings) -> None:
    """Storage class and encryption on every object written, and the requester-pays
    acknowledgement on every request that takes it, whoever makes the call."""
    options = {
        "StorageClass": settings.storage_class,
        "ServerSideEncryption": settings.sse.value if settings.sse else None,
        "SSEKMSKeyId": settings.sse_kms_key_id,
    }
    written = {name: value for name, value in options.items() if value is not None}

    def add(params: dict[str, Any], extra: dict[str, str]) -> None:
        for name, value in extra.items():
            params.setdefault(name, value)

    for operation in ("PutObject", "CreateMultipartUpload"):
        if written:
            client.meta.events.register(
                f"before-parameter-build.s3.{operation}",
                lambda params, **_: add(params, written),
            )
    if settings.requester_pays:
        for operation in _PAYING_OPERATIONS:
            client.meta.events.register(
                f"before-parameter-build.s3.{operation}",
                lambda params, **_: add(params, {"RequestPayer": "requester"}),
            )


def make_transfer_manager(client: Any, settings: Settings) -> TransferManager:
    return TransferManager(
        client,
        TransferConfig(
            multipart_threshold=settings.multipart_threshold_bytes,
            multipart_chunksize=settings.part_size_bytes,
            max_request_concurrency=settings.max_concurrency,
            # Bound what a download may hold in memory: parts waiting for their
            # turn (one window of parts) and 256 KiB writes queued for the IO
            # thread (100 of them).
            max_in_memory_download_chunks=settings.max_concurrency,
            max_io_queue_size=100,
        ),
    )


class BotocoreMover:
    """Object bytes through botocore (small) and s3transfer (at or above the threshold).

    The client and the transfer manager are given as functions: both are
    made on first use, by the store that owns them.
    """

    def __init__(
        self,
        client: Callable[[], Any],
        transfers: Callable[[], TransferManager],
        multipart_threshold_bytes: int,
        *,
        files_in_flight: int,
    ) -> None:
        self._client = client
        self._transfers = transfers
        self._threshold = multipart_threshold_bytes
        self._files_in_flight = files_in_flight

    def head(self, url: S3Url) -> ObjectInfo | None:
        try:
            response = self._client().head_object(Bucket=url.bucket, Key=url.key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise translate(exc, str(url), "read") from exc
            return None
        except BotoCoreError as exc:
            raise translate(exc, str(url), "read") from exc
        return _info_from_response(url, response)

    def bucket_exists(self, bucket: str) -> bool:
        with translating(f"s3://{bucket}/", "open bucket"):
            try:
                self._client().head_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise
        return True

    def list(self, prefix: S3Url) -> Iterator[Listed]:
        paginator = self._client().get_paginator("list_objects_v2")
        with translating(prefix, "list"):
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for item in page.get("Contents", []):
                    yield Listed(
                        S3Url(prefix.bucket, item["Key"]), int(item["Size"]), item.get("ETag")
                    )

    def read_many(self, reads: Sequence[Read]) -> Sequence[ReadOutcome]:
        def read(item: Read) -> ReadOutcome:
            try:
                return self.read_into(item.url, item.writer, info=None, on_bytes=None)
            except (StagerError, OSError) as exc:
                return exc

        return run_all(read, reads, workers=self._files_in_flight)

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None,
        on_bytes: ProgressCallback | None,
        size_hint: int | None = None,
    ) -> ObjectInfo:
        # With a HEAD's info at or above the threshold: parallel ranged GETs pinned
        # to its ETag. Otherwise one GET, whose own headers describe the object (a
        # size hint changes nothing here).
        if info is not None and info.size >= self._threshold:
            with translating(url, "download"):
                future = self._transfers().download(
                    url.bucket, url.key, writer, subscribers=[_Subscriber(info, on_bytes)]
                )
                _wait(future)
            return info
        with translating(url, "download"):
            response = self._client().get_object(Bucket=url.bucket, Key=url.key)
            for chunk in response["Body"].iter_chunks(256 * 1024):
                writer.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return _info_from_response(url, response)

    def write_many(self, writes: Sequence[Write]) -> Sequence[WriteOutcome]:
        def write(item: Write) -> WriteOutcome:
            try:
                self.put_file(
                    item.path,
                    item.url,
                    size=item.size,
                    metadata=item.metadata,
                    on_bytes=None,
                    condition=None,
                )
            except (StagerError, OSError) as exc:
                return exc
            return None

        return run_all(write, writes, workers=self._files_in_flight)

    def put_file(
        self,
        path: Path,
        url: S3Url,
        *,
        size: int,
        metadata: Mapping[str, str],
        on_bytes: ProgressCallback | None,
        condition: WriteCondition | None,
    ) -> None:
        if size < self._threshold:
            extra = _condition_args(condition)
            with path.open("rb") as body, translating(url, "upload to"):
                self._client().put_object(
                    Bucket=url.bucket, Key=url.key, Body=body, Metadata=dict(metadata), **extra
                )
            if on_bytes is not None:
                on_bytes(size)
            return
        if condition is not None:  # s3transfer cannot send conditions: checked before, racily
            self._check(url, condition)
        with translating(url, "upload to"):
            future = self._transfers().upload(
                str(path),
                url.bucket,
                url.key,
                extra_args={"Metadata": dict(metadata)},
                subscribers=[_Subscriber(None, on_bytes)],
            )
            _wait(future)

    def _check(self, url: S3Url, condition: WriteCondition) -> None:
        info = self.head(url)
        if (condition.absent and info is not None) or (
            condition.etag is not None and (info is None or info.etag != condition.etag)
        ):
            raise PreconditionFailedError(f"cannot upload to {url}: it changed or exists")

    def put_small(
        self,
        url: S3Url,
        data: bytes,
        *,
        metadata: Mapping[str, str],
        condition: WriteCondition | None,
    ) -> None:
        extra = _condition_args(condition)
        with translating(url, "write"):
            self._client().put_object(
                Bucket=url.bucket, Key=url.key, Body=data, Metadata=dict(metadata), **extra
            )

    def get_small(self, url: S3Url) -> tuple[bytes, Digest | None]:
        with translating(url, "read"):
            response = self._client().get_object(Bucket=url.bucket, Key=url.key)
            data = response["Body"].read()
        return data, recorded_digest(url, response.get("Metadata", {}).get(DIGEST_METADATA_KEY))


class _Subscriber(BaseSubscriber):  # type: ignore[misc]
    """Feeds what our own HEAD learnt to s3transfer (saving its HEAD; the ETag
    pins every ranged GET to one version) and progress to a callback."""

    def __init__(self, known: ObjectInfo | None, on_bytes: ProgressCallback | None) -> None:
        self._known = known
        self._on_bytes = on_bytes

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        if self._known is not None and self._known.etag is not None:
            future.meta.provide_transfer_size(self._known.size)
            future.meta.provide_object_etag(self._known.etag)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._on_bytes is not None:
            self._on_bytes(bytes_transferred)


def _info_from_response(url: S3Url, response: dict[str, Any]) -> ObjectInfo:
    """What a botocore HEAD or GET response says about the object."""
    digest = recorded_digest(url, response.get("Metadata", {}).get(DIGEST_METADATA_KEY))
    metadata = response.get("Metadata", {})
    size = int(response["ContentLength"])
    return ObjectInfo(
        url,
        size,
        digest,
        response.get("ETag"),
        metadata.get(TASK_METADATA_KEY),
        metadata.get(GENERATION_METADATA_KEY),
    )


def _condition_args(condition: WriteCondition | None) -> dict[str, str]:
    """botocore's PutObject arguments for ``condition``."""
    if condition is None:
        return {}
    if condition.absent:
        return {"IfNoneMatch": "*"}
    return {"IfMatch": condition.etag} if condition.etag else {}


def _wait(future: Any) -> None:
    """Wait for an s3transfer future; cancel it if we are interrupted."""
    try:
        future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


def configured_endpoint(session: Any) -> str | None:
    """The S3 endpoint the AWS configuration names, as botocore's client would find it."""
    core = session._session  # boto3 keeps botocore's session, which resolves it, here
    if core.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    found = ConfiguredEndpointProvider(
        full_config=core.full_config, scoped_config=core.get_scoped_config(), client_name="s3"
    ).provide()
    return str(found) if found else None


def keys_of(session: Any) -> Callable[[], tuple[str, str, str | None] | None]:
    """The session's current keys, frozen, for the native client (refreshed when due)."""

    def keys() -> tuple[str, str, str | None] | None:
        credentials = session.get_credentials()
        if credentials is None:
            return None
        frozen = credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    return keys
