"""What moves object bytes: the native client, or botocore with s3transfer.

:class:`ByteMover` is the seam. :class:`~stager.objectstore.ObjectStore`
chooses one implementation when it first moves bytes
(``settings.transfer_client``) and never asks again; bucket and listing
requests always go through botocore. Both movers split large objects
themselves (multipart uploads, parallel ranged GETs); nothing here does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from stager.digest import Digest, HashingWriter
from stager.locations import S3Url
from stager.objectinfo import (
    DIGEST_HEADER,
    GENERATION_HEADER,
    TASK_HEADER,
    ObjectInfo,
    WriteCondition,
    recorded_digest,
)

if TYPE_CHECKING:
    from stager.crt import CrtTransfers, Headers

ProgressCallback = Callable[[int], None]


class ByteMover(Protocol):
    """One way of moving object bytes; every method translates its errors to StagerError."""

    def head(self, url: S3Url) -> ObjectInfo | None:
        """The object's size and digest, ``None`` if the key does not exist."""
        ...

    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists (False on a 404; other failures raise)."""
        ...

    def list(self, prefix: S3Url) -> Iterator[tuple[S3Url, int]]:
        """(location, size) of every object whose key starts with ``prefix.key``."""
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

    def bucket_exists(self, bucket: str) -> bool:
        self._count("HeadBucket")
        return self._native.head(S3Url(bucket, "")) is not None

    def list(self, prefix: S3Url) -> Iterator[tuple[S3Url, int]]:
        self._count("ListObjectsV2")  # once per listing, however many pages
        for key, size in self._native.list(prefix):
            yield S3Url(prefix.bucket, key), size

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
