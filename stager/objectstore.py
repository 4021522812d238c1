"""The S3 object store: verified uploads and downloads on boto3 + s3transfer.

Contract:

- Every object stager writes carries its digest in user metadata
  (``x-amz-meta-stager-digest: xxh3-128:...``).
- A download streams through a :class:`~stager.digest.HashingWriter` into a
  temp file next to the destination; the file takes its final name only if
  its size and digest match what the object's metadata promised. Objects
  without a digest (written by other tools) are hashed the same way and
  reported as unverified.
- Object bytes move through one :class:`~stager.movers.ByteMover`, chosen
  once: the native client (:mod:`stager.crt`, the default) or s3transfer
  (``transfer_client = "s3transfer"``); either one splits multipart uploads
  and parallel ranged GETs, nothing here does.
- Every botocore error leaves this module as a :class:`~stager.errors.StagerError`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.configprovider import ConfiguredEndpointProvider
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.manager import TransferConfig, TransferManager

from stager.atomic import atomic_file
from stager.digest import Digest, HashingWriter, digest_bytes
from stager.errors import AccessDeniedError, IntegrityError, NotFoundError
from stager.locations import S3Url
from stager.movers import BotocoreMover, ByteMover, NativeMover, ProgressCallback
from stager.objectinfo import ObjectInfo, WriteCondition, check_received, digest_metadata
from stager.s3errors import translate, translating
from stager.settings import Settings, TransferClient
from stager.uploadjournal import UploadJournal

if TYPE_CHECKING:
    from stager import crt


@dataclass(frozen=True)
class Received:
    """The outcome of one verified download."""

    digest: Digest
    size: int
    verified: bool


@dataclass(frozen=True)
class Credentials:
    """Explicit S3 keys, for servers we start ourselves; the secret never prints."""

    access_key: str
    secret_key: str = field(repr=False)


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
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config, verify=verify)


class ObjectStore:
    """Verified object I/O against one S3 endpoint. Thread-safe; close() when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        credentials: Credentials | None = None,
        journal: UploadJournal | None = None,
    ) -> None:
        """``journal``: where uploads that go in parts are recorded while they run, so
        that the next process can abort those a killed one left open."""
        self.settings = settings
        self.journal = journal
        self._session = make_session(settings, credentials)
        self._buckets_seen: set[str] = set()  # buckets known to exist (never forgotten)
        # Requests sent, by S3 operation name, whichever client sent them.
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        # The clients are made on first use: botocore's takes ~0.3 s (its S3
        # model is a large JSON file), which a command whose requests all go
        # through the native client (a memoized `stager wrap`) never pays.
        self._clients_lock = threading.Lock()
        self._client: Any = None
        self._manager: TransferManager | None = None
        self._mover: ByteMover | None = None
        self._mover_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The botocore S3 client (metadata requests, and the s3transfer path)."""
        with self._clients_lock:
            if self._client is None:
                self._client = make_client(self.settings, session=self._session)
                self._client.meta.events.register("before-call.s3", self._count_botocore)
            return self._client

    @property
    def _transfers(self) -> TransferManager:
        client = self.client
        with self._clients_lock:
            if self._manager is None:
                settings = self.settings
                self._manager = TransferManager(
                    client,
                    TransferConfig(
                        multipart_threshold=settings.multipart_threshold_bytes,
                        multipart_chunksize=settings.part_size_bytes,
                        max_request_concurrency=settings.max_concurrency,
                        # Bound what a download may hold in memory: parts waiting
                        # for their turn (one window of parts) and 256 KiB writes
                        # queued for the IO thread (100 of them).
                        max_in_memory_download_chunks=settings.max_concurrency,
                        max_io_queue_size=100,
                    ),
                )
            return self._manager

    def close(self, *, cancel: bool = False) -> None:
        with self._clients_lock:
            manager, self._manager = self._manager, None
            self._mover = None  # a native client's threads stop once no request holds it
        if manager is not None:
            manager.shutdown(cancel=cancel)

    def _count(self, operation: str) -> None:
        with self._requests_lock:
            self.requests[operation] += 1

    def _count_botocore(self, model: Any, **_: Any) -> None:
        self._count(model.name)

    def _bytes(self) -> ByteMover:
        """The byte mover, chosen once from the settings and made on first use."""
        if (mover := self._mover) is not None:
            return mover
        with self._mover_lock:  # not the clients' lock: a native client needs botocore's
            if self._mover is None:
                if self.settings.transfer_client is TransferClient.S3TRANSFER:
                    self._mover = BotocoreMover(
                        lambda: self.client,
                        lambda: self._transfers,
                        self.settings.multipart_threshold_bytes,
                    )
                else:
                    self._mover = NativeMover(self._native_client(), self._count)
            return self._mover

    def _native_client(self) -> crt.CrtTransfers:
        from stager.crt import CrtTransfers  # awscrt loads in ~80 ms: only when bytes move

        endpoint_url, region = self._endpoint()  # unlocked: it may make botocore's client
        keys = _keys_of(self._session)
        if keys() is None:  # say it here: the native signer could only fail vaguely
            raise AccessDeniedError("cannot reach S3: no AWS credentials were found")
        return CrtTransfers(
            self.settings, keys, endpoint_url=endpoint_url, region=region, ca_file=self._ca_bundle()
        )

    @property
    def endpoint_id(self) -> str:
        """Names the endpoint, to tell the same key at two stores apart (no request made)."""
        configured = self.settings.endpoint_url or _configured_endpoint(self._session)
        return configured or f"aws:{self.settings.region or self._session.region_name or ''}"

    def _endpoint(self) -> tuple[str, str]:
        """(endpoint URL, region) for the native client.

        A configured endpoint (flag, setting, ``AWS_ENDPOINT_URL[_S3]``, the
        profile) is used as it is; AWS's own is resolved by botocore's client
        (its rules know partitions, FIPS and dual-stack names).
        """
        configured = self.settings.endpoint_url or _configured_endpoint(self._session)
        if configured:
            return configured, self.settings.region or self._session.region_name or "us-east-1"
        meta = self.client.meta
        return meta.endpoint_url, meta.region_name or "us-east-1"

    def _ca_bundle(self) -> str | None:
        """The CA file botocore trusts for this endpoint: ours, or the AWS chain's."""
        if self.settings.ca_bundle is not None:
            return str(self.settings.ca_bundle)
        # boto3 has no public accessor for config variables; its botocore session does.
        chained = self._session._session.get_config_variable("ca_bundle")
        return str(chained) if chained else None

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(cancel=exc is not None)

    # -- metadata -----------------------------------------------------------------

    def head(self, url: S3Url) -> ObjectInfo | None:
        """The object's size and digest, ``None`` if the key does not exist.

        A missing bucket raises :class:`NotFoundError` (a bucket typo should
        not read as "nothing pushed yet").
        """
        info = self._bytes().head(url)
        if info is None and url.bucket not in self._buckets_seen:  # once per bucket
            self.check_bucket(url.bucket)
        return info

    def check_bucket(self, bucket: str) -> None:
        """Raise :class:`NotFoundError` unless ``bucket`` exists and is reachable."""
        with translating(f"s3://{bucket}/", "open bucket"):
            try:
                self.client.head_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise NotFoundError(
                        f"bucket {bucket!r} does not exist",
                        hint="create it first or check its name",
                    ) from exc
                raise
        self._buckets_seen.add(bucket)

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists."""
        try:
            self.check_bucket(bucket)
        except NotFoundError:
            with translating(f"s3://{bucket}/", "create bucket"):
                self.client.create_bucket(Bucket=bucket)

    def list(self, prefix: S3Url) -> Iterator[tuple[S3Url, int]]:
        """(location, size) of every object whose key starts with ``prefix.key``."""
        paginator = self.client.get_paginator("list_objects_v2")
        with translating(prefix, "list"):
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for item in page.get("Contents", []):
                    yield S3Url(prefix.bucket, item["Key"]), int(item["Size"])

    def incomplete_uploads(self, prefix: S3Url) -> Iterator[IncompleteUpload]:
        """Multipart uploads begun under ``prefix`` and never completed nor aborted."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        with translating(prefix, "list incomplete uploads"):
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for item in page.get("Uploads", []):
                    yield IncompleteUpload(
                        S3Url(prefix.bucket, item["Key"]),
                        item["UploadId"],
                        item["Initiated"].timestamp(),
                    )

    def abort_upload(self, upload: IncompleteUpload) -> None:
        """Drop an incomplete upload and the parts it stored (idempotent)."""
        url = upload.url
        with translating(url, "abort an incomplete upload"):
            try:
                self.client.abort_multipart_upload(
                    Bucket=url.bucket, Key=url.key, UploadId=upload.upload_id
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise

    def abort_left_behind(self) -> int:
        """Abort the uploads this host's killed processes left open (see
        :mod:`stager.uploadjournal`); how many were aborted. Each record is
        dropped once its uploads are."""
        if self.journal is None:
            return 0
        aborted = 0
        for path, record in self.journal.left_behind():
            for upload in self.incomplete_uploads(record.url):
                if upload.url == record.url and record.began(upload.initiated_at):
                    self.abort_upload(upload)
                    aborted += 1
            path.unlink(missing_ok=True)
        return aborted

    # -- data ---------------------------------------------------------------------

    def upload_file(
        self,
        path: Path,
        url: S3Url,
        *,
        digest: Digest,
        size: int,
        on_bytes: ProgressCallback | None = None,
        task: str | None = None,
        generation: str | None = None,
        condition: WriteCondition | None = None,
    ) -> None:
        """Upload ``path`` (``size`` bytes) to ``url`` with ``digest`` in its metadata.

        The caller computed ``digest`` from the same bytes; local read errors
        surface as ``OSError`` for the caller to name. ``task`` (a task key) is
        recorded too; a ``condition`` that does not hold raises
        :class:`~stager.errors.PreconditionFailedError` and writes nothing (the
        native client sends it with the request; with s3transfer, an upload at
        or above the multipart threshold is checked by a HEAD just before).
        """
        recording = self.journal.recording(url, size) if self.journal else contextlib.nullcontext()
        with recording:
            self._bytes().put_file(
                path,
                url,
                size=size,
                metadata=digest_metadata(digest, task, generation),
                on_bytes=on_bytes,
                condition=condition,
            )

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None = None,
        on_bytes: ProgressCallback | None = None,
    ) -> ObjectInfo:
        """Stream the object's bytes into ``writer`` in order; return what it is.

        With ``info`` (from :meth:`head`) at or above the multipart threshold,
        parts come as parallel ranged GETs pinned to ``info.etag``; otherwise
        one GET, whose own headers describe the object. The caller checks
        ``writer.hasher`` against the result (see :func:`check_received`).
        With the native client (``transfer_client = "crt"``), it splits large
        objects itself and the GET's own headers describe the object.
        """
        return self._bytes().read_into(url, writer, info=info, on_bytes=on_bytes)

    def download_file(
        self,
        url: S3Url,
        dest: Path,
        *,
        info: ObjectInfo | None = None,
        on_bytes: ProgressCallback | None = None,
        fsync: bool = False,
    ) -> Received:
        """Download ``url`` to ``dest``, verified against its recorded size and digest.

        Raises :class:`~stager.errors.IntegrityError` when the bytes do not match; then
        nothing exists at ``dest`` (nor under a temp name). ``dest`` appears whole or
        not at all either way; ``fsync`` also makes it survive an operating-system
        crash (the file, then its directory, synced before the call returns).
        """
        with atomic_file(dest, durable=fsync) as handle:
            writer = HashingWriter(handle)
            info = self.read_into(url, writer, info=info, on_bytes=on_bytes)
            check_received(info, writer.hasher)
        return Received(writer.hasher.digest, writer.hasher.size, info.digest is not None)

    def put_bytes(self, url: S3Url, data: bytes, *, create_only: bool = False) -> Digest:
        """Store a small object in one request; return its digest.

        With ``create_only`` the write fails with
        :class:`~stager.errors.PreconditionFailedError` if the key exists
        (``If-None-Match: *``), so an accepted object is never replaced.
        """
        digest = digest_bytes(data)
        self._bytes().put_small(
            url, data, metadata=digest_metadata(digest), create_only=create_only
        )
        return digest

    def delete(self, url: S3Url) -> None:
        with translating(url, "delete"):
            self.client.delete_object(Bucket=url.bucket, Key=url.key)

    def get_bytes(self, url: S3Url) -> bytes:
        """Read a small object whole, verified against its digest if it has one."""
        data, recorded = self._bytes().get_small(url)
        if recorded is not None and digest_bytes(data) != recorded:
            raise IntegrityError(f"{url}: content does not match its recorded digest")
        return data


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload left open (a process killed mid-upload leaves one)."""

    url: S3Url
    upload_id: str
    initiated_at: float  # Unix time, by the server's clock


def _configured_endpoint(session: Any) -> str | None:
    """The S3 endpoint the AWS configuration names, as botocore's client would find it."""
    core = session._session  # boto3 keeps botocore's session, which resolves it, here
    if core.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    found = ConfiguredEndpointProvider(
        full_config=core.full_config, scoped_config=core.get_scoped_config(), client_name="s3"
    ).provide()
    return str(found) if found else None


def _keys_of(session: Any) -> Callable[[], tuple[str, str, str | None] | None]:
    """The session's current keys, frozen, for the native client (refreshed when due)."""

    def keys() -> tuple[str, str, str | None] | None:
        credentials = session.get_credentials()
        if credentials is None:
            return None
        frozen = credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    return keys
