"""What moves object bytes: the native client, or botocore with s3transfer.

:class:`ByteMover` is the seam. :class:`~stager.objectstore.ObjectStore`
chooses one implementation when it first moves bytes
(``settings.transfer_client``) and never asks again; bucket and listing
requests always go through botocore. Both movers split large objects
themselves (multipart uploads, parallel ranged GETs); nothing here does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from stager.digest import Digest, HashingWriter
from stager.errors import PreconditionFailedError
from stager.locations import S3Url
from stager.objectinfo import (
    DIGEST_HEADER,
    DIGEST_METADATA_KEY,
    GENERATION_HEADER,
    GENERATION_METADATA_KEY,
    TASK_HEADER,
    TASK_METADATA_KEY,
    ObjectInfo,
    WriteCondition,
    recorded_digest,
)
from stager.s3errors import translate, translating

if TYPE_CHECKING:
    from stager.crt import CrtTransfers, Headers

ProgressCallback = Callable[[int], None]


class ByteMover(Protocol):
    """One way of moving object bytes; every method translates its errors to StagerError."""

    def head(self, url: S3Url) -> ObjectInfo | None:
        """The object's size and digest, ``None`` if the key does not exist."""
        ...

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None,
        on_bytes: ProgressCallback | None,
    ) -> ObjectInfo:
        """Stream the object's bytes into ``writer`` in order; return what it is."""
        ...

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
        """Upload ``path``; local read errors surface as ``OSError``.

        A ``condition`` that does not hold raises PreconditionFailedError.
        """
        ...

    def put_small(
        self, url: S3Url, data: bytes, *, metadata: Mapping[str, str], create_only: bool
    ) -> None:
        """One PUT; ``create_only`` fails on a taken key (PreconditionFailedError)."""
        ...

    def get_small(self, url: S3Url) -> tuple[bytes, Digest | None]:
        """A small object's bytes and the digest its metadata records, in one GET."""
        ...


class NativeMover:
    """Object bytes through awscrt (:mod:`stager.crt`); ``count`` tallies each request."""

    def __init__(self, native: CrtTransfers, count: Callable[[str], None]) -> None:
        self._native = native
        self._count = count

    def head(self, url: S3Url) -> ObjectInfo | None:
        self._count("HeadObject")
        headers = self._native.head(url)
        return None if headers is None else _info_from_headers(url, headers)

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None,
        on_bytes: ProgressCallback | None,
    ) -> ObjectInfo:
        # The client splits large objects itself; the GET's own headers describe the object.
        self._count("GetObject")
        size_hint = info.size if info is not None else None
        return _info_from_headers(
            url, self._native.get(url, writer.write, on_bytes, size_hint=size_hint)
        )

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
        self._count("PutObject")
        conditions = condition.headers() if condition else None
        self._native.put_file(
            path, url, size=size, metadata=metadata, on_bytes=on_bytes, conditions=conditions
        )

    def put_small(
        self, url: S3Url, data: bytes, *, metadata: Mapping[str, str], create_only: bool
    ) -> None:
        self._count("PutObject")
        self._native.put_small(url, data, metadata=metadata, create_only=create_only)

    def get_small(self, url: S3Url) -> tuple[bytes, Digest | None]:
        self._count("GetObject")
        data, headers = self._native.get_small(url)
        return data, recorded_digest(url, headers.get(DIGEST_HEADER))


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
    ) -> None:
        self._client = client
        self._transfers = transfers
        self._threshold = multipart_threshold_bytes

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

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None,
        on_bytes: ProgressCallback | None,
    ) -> ObjectInfo:
        # With a HEAD's info at or above the threshold: parallel ranged GETs pinned
        # to its ETag. Otherwise one GET, whose own headers describe the object.
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
        self, url: S3Url, data: bytes, *, metadata: Mapping[str, str], create_only: bool
    ) -> None:
        extra = _condition_args(WriteCondition(absent=create_only))
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


def _info_from_headers(url: S3Url, headers: Headers) -> ObjectInfo:
    """What the native client's response headers say about the object."""
    digest = recorded_digest(url, headers.get(DIGEST_HEADER))
    return ObjectInfo(
        url,
        headers.object_size(),
        digest,
        headers.get("etag"),
        headers.get(TASK_HEADER),
        headers.get(GENERATION_HEADER),
    )


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
