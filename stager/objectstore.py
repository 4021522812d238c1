"""The S3 object store: verified uploads and downloads.

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
- With the native client, a command that moves bytes, heads and lists
  objects never loads boto3 (~0.3 s): endpoint, region and CA bundle come
  from :mod:`stager.awsconfig`, credentials from the native client's own
  chain. What only botocore knows (FIPS endpoints, SSO logins, bucket
  creation, incomplete multipart uploads) loads it when asked for.
- Every client error leaves this module as a :class:`~stager.errors.StagerError`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stager.atomic import atomic_file
from stager.awsconfig import DEFAULT_REGION, AwsConfig, Credentials, load_aws_config, proxied
from stager.digest import Digest, HashingWriter, digest_bytes
from stager.errors import AccessDeniedError, IntegrityError, NotFoundError
from stager.locations import S3Url
from stager.movers import (
    ByteMover,
    NativeMover,
    ProgressCallback,
    Read,
    ReadOutcome,
    Write,
    WriteOutcome,
)
from stager.objectinfo import (
    Listed,
    ObjectInfo,
    WriteCondition,
    check_received,
    digest_metadata,
)
from stager.s3errors import translating
from stager.settings import Settings, TransferClient
from stager.uploadjournal import UploadJournal

if TYPE_CHECKING:
    from awscrt.auth import AwsCredentialsProvider
    from s3transfer.manager import TransferManager

    from stager import crt


@dataclass(frozen=True)
class Received:
    """The outcome of one verified download."""

    digest: Digest
    size: int
    verified: bool


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
        self._credentials = credentials
        self._aws: AwsConfig | None = None
        self._buckets_seen: set[str] = set()  # buckets known to exist (never forgotten)
        # Requests sent, by S3 operation name, whichever client sent them.
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        # botocore's session and client are made on first use: they take ~0.3 s
        # (botocore's S3 model is a large JSON file), which a command whose
        # requests all go through the native client never pays.
        self._clients_lock = threading.Lock()
        self._session: Any = None
        self._client: Any = None
        self._manager: TransferManager | None = None
        self._mover: ByteMover | None = None
        self._native: crt.CrtTransfers | None = None
        self._mover_lock = threading.Lock()

    @property
    def aws(self) -> AwsConfig:
        """Where S3 is and in which region (:mod:`stager.awsconfig`), resolved on first use:
        off EC2, with no region configured, it may wait up to a second for the metadata
        service."""
        if self._aws is None:
            self._aws = load_aws_config(self.settings)
        return self._aws

    @property
    def session(self) -> Any:
        """botocore's session (a boto3 one), made on first use."""
        from stager.botoclient import make_session

        with self._clients_lock:
            if self._session is None:
                self._session = make_session(self.settings, self._credentials)
            return self._session

    @property
    def client(self) -> Any:
        """The botocore S3 client (what only it does, and the s3transfer path)."""
        from stager.botoclient import make_client

        session = self.session
        with self._clients_lock:
            if self._client is None:
                self._client = make_client(self.settings, session=session)
                self._client.meta.events.register("before-call.s3", self._count_botocore)
            return self._client

    @property
    def _transfers(self) -> TransferManager:
        from stager.botoclient import make_transfer_manager

        client = self.client
        with self._clients_lock:
            if self._manager is None:
                self._manager = make_transfer_manager(client, self.settings)
            return self._manager

    def close(self, *, cancel: bool = False) -> None:
        with self._clients_lock:
            manager, self._manager = self._manager, None
            self._mover = self._native = None  # native threads stop once no request holds them
        if manager is not None:
            manager.shutdown(cancel=cancel)

    def _count(self, operation: str) -> None:
        with self._requests_lock:
            self.requests[operation] += 1

    def _count_botocore(self, model: Any, **_: Any) -> None:
        self._count(model.name)

    def _bytes(self) -> ByteMover:
        """The byte mover, chosen once from the settings and made on first use.

        The native mover's small requests cannot use an HTTP proxy: where one
        applies to the endpoint, botocore's mover (which honours it, and
        ``NO_PROXY``) moves the bytes instead."""
        if (mover := self._mover) is not None:
            return mover
        if self.settings.transfer_client is TransferClient.S3TRANSFER or proxied(self.aws.endpoint):
            from stager.botoclient import BotocoreMover

            made: ByteMover = BotocoreMover(
                lambda: self.client,
                lambda: self._transfers,
                self.settings.multipart_threshold_bytes,
                files_in_flight=self.settings.files_in_flight,
            )
        else:
            made = NativeMover(
                self._native_client(),
                self._count,
                in_flight=self.settings.max_concurrency + self.settings.files_in_flight,
            )
        with self._mover_lock:
            if self._mover is None:
                self._mover = made
            return self._mover

    def _native_client(self) -> crt.CrtTransfers:
        """The native client, made on first use (awscrt loads in ~0.1 s)."""
        if (native := self._native) is not None:
            return native
        from stager.crt import CrtTransfers

        aws = self.aws
        if aws.needs_botocore:  # endpoint rules or a profile only botocore knows
            from stager.botoclient import configured_endpoint

            meta = self.client.meta
            endpoint = configured_endpoint(self.session) or meta.endpoint_url
            aws = replace(aws, endpoint_url=endpoint, region=meta.region_name)
        made = CrtTransfers(
            self.settings,
            self._signing(),
            endpoint_url=aws.endpoint,
            region=aws.region or DEFAULT_REGION,
            ca_file=aws.ca_bundle,
        )
        with self._mover_lock:
            if self._native is None:
                self._native = made
            return self._native

    def _signing(self) -> AwsCredentialsProvider:
        """Credentials for the native client: given ones, else its own chain, else (for
        sources only botocore knows, such as SSO logins) botocore's."""
        from stager import crt

        if self._credentials is not None:
            keys = self._credentials
            return crt.static_provider(keys.access_key, keys.secret_key)
        if not self.aws.needs_botocore:
            chain = crt.chain_provider(self.aws.profile)
            if crt.found_credentials(chain):
                return chain
        from stager.botoclient import keys_of

        keys_now = keys_of(self.session)
        if keys_now() is None:  # say it here: the native signer could only fail vaguely
            raise AccessDeniedError("cannot reach S3: no AWS credentials were found")
        return crt.delegate_provider(keys_now)

    @property
    def endpoint_id(self) -> str:
        """Names the endpoint, to tell the same key at two stores apart (no request made)."""
        return self.aws.endpoint_id

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
        if not self._bytes().bucket_exists(bucket):
            raise NotFoundError(
                f"bucket {bucket!r} does not exist", hint="create it first or check its name"
            )
        self._buckets_seen.add(bucket)

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists."""
        try:
            self.check_bucket(bucket)
        except NotFoundError:
            with translating(f"s3://{bucket}/", "create bucket"):
                self.client.create_bucket(Bucket=bucket)

    def list(self, prefix: S3Url) -> Iterator[Listed]:
        """Every object whose key starts with ``prefix.key`` (location, size, ETag)."""
        return self._bytes().list(prefix)

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
            except Exception as exc:  # botocore's ClientError, loaded with the client
                if getattr(exc, "response", {}).get("Error", {}).get("Code") != "NoSuchUpload":
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

    def upload_many(
        self, uploads: Sequence[tuple[Path, S3Url, Digest, int]]
    ) -> Sequence[WriteOutcome]:
        """Small files (path, url, digest, size; each below the multipart threshold), one
        PUT each, many at once; each one's error, or None. As :meth:`upload_file` for each."""
        writes = [
            Write(path, url, size, digest_metadata(digest)) for path, url, digest, size in uploads
        ]
        return self._bytes().write_many(writes)

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None = None,
        on_bytes: ProgressCallback | None = None,
        size_hint: int | None = None,
    ) -> ObjectInfo:
        """Stream the object's bytes into ``writer`` in order; return what it is.

        With ``info`` (from :meth:`head`) at or above the multipart threshold,
        parts come as parallel ranged GETs pinned to ``info.etag``; otherwise
        one GET, whose own headers describe the object. The caller checks
        ``writer.hasher`` against the result (see :func:`check_received`).
        With the native client (``transfer_client = "crt"``), it splits large
        objects itself and the GET's own headers describe the object; a
        ``size_hint`` (the size the caller expects, unchecked) lets it send a
        small object as one plain GET.
        """
        return self._bytes().read_into(
            url, writer, info=info, on_bytes=on_bytes, size_hint=size_hint
        )

    def read_many(self, reads: Sequence[Read]) -> Sequence[ReadOutcome]:
        """Small objects into their writers, many at once; each one's info or error
        (see :meth:`ByteMover.read_many <stager.movers.ByteMover.read_many>`)."""
        return self._bytes().read_many(reads)

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

    def upload_bytes(
        self,
        data: bytes,
        url: S3Url,
        *,
        digest: Digest,
        task: str | None = None,
        generation: str | None = None,
        condition: WriteCondition | None = None,
    ) -> None:
        """As :meth:`upload_file`, for bytes held in memory: one PUT (keep them small)."""
        self._bytes().put_small(
            url, data, metadata=digest_metadata(digest, task, generation), condition=condition
        )

    def put_bytes(self, url: S3Url, data: bytes, *, create_only: bool = False) -> Digest:
        """Store a small object in one request; return its digest.

        With ``create_only`` the write fails with
        :class:`~stager.errors.PreconditionFailedError` if the key exists
        (``If-None-Match: *``), so an accepted object is never replaced.
        """
        digest = digest_bytes(data)
        condition = WriteCondition(absent=True) if create_only else None
        self.upload_bytes(data, url, digest=digest, condition=condition)
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
