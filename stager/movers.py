"""What moves object bytes: the native client, or botocore with s3transfer.

:class:`ByteMover` is the seam. :class:`~stager.objectstore.ObjectStore`
chooses one implementation when it first moves bytes
(``settings.transfer_client``) and never asks again; bucket and listing
requests always go through botocore. Both movers split large objects
themselves (multipart uploads, parallel ranged GETs); nothing here does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from stager.digest import Digest, HashingWriter
from stager.errors import StagerError
from stager.locations import S3Url
from stager.objectinfo import (
    DIGEST_HEADER,
    GENERATION_HEADER,
    TASK_HEADER,
    Listed,
    ObjectInfo,
    WriteCondition,
    recorded_digest,
)

if TYPE_CHECKING:
    from stager.crt import CrtTransfers, Headers

ProgressCallback = Callable[[int], None]
ReadOutcome = ObjectInfo | StagerError | OSError  # what one read of a batch came to
WriteOutcome = StagerError | OSError | None  # what one write of a batch came to (None: done)


class Read(NamedTuple):
    """One object of a batch of reads, and the writer its bytes stream into."""

    url: S3Url
    writer: HashingWriter


class Write(NamedTuple):
    """One small file of a batch of writes, where it goes and its user metadata."""

    path: Path
    url: S3Url
    size: int
    metadata: Mapping[str, str]


class ByteMover(Protocol):
    """One way of moving object bytes; every method translates its errors to StagerError."""

    def head(self, url: S3Url) -> ObjectInfo | None:
        """The object's size and digest, ``None`` if the key does not exist."""
        ...

    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists (False on a 404; other failures raise)."""
        ...

    def list(self, prefix: S3Url) -> Iterator[Listed]:
        """Every object whose key starts with ``prefix.key``."""
        ...

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None,
        on_bytes: ProgressCallback | None,
        size_hint: int | None = None,
    ) -> ObjectInfo:
        """Stream the object's bytes into ``writer`` in order; return what it is.
        ``size_hint`` (the size a task's spec gives, say) only chooses how to ask."""
        ...

    def read_many(self, reads: Sequence[Read]) -> Sequence[ReadOutcome]:
        """Small objects (below the multipart threshold), one plain GET each, many at
        once; each object's info, or its error: a failure fails only its own read.
        The caller checks each writer's hasher against its info."""
        ...

    def write_many(self, writes: Sequence[Write]) -> Sequence[WriteOutcome]:
        """Small files (below the multipart threshold), one PUT each, many at once;
        each one's error, or None: a failure fails only its own write."""
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
        self,
        url: S3Url,
        data: bytes,
        *,
        metadata: Mapping[str, str],
        condition: WriteCondition | None,
    ) -> None:
        """One PUT; a ``condition`` that does not hold raises PreconditionFailedError."""
        ...

    def get_small(self, url: S3Url) -> tuple[bytes, Digest | None]:
        """A small object's bytes and the digest its metadata records, in one GET."""
        ...


class NativeMover:
    """Object bytes through awscrt (:mod:`stager.crt`); ``count`` tallies each request."""

    def __init__(
        self, native: CrtTransfers, count: Callable[[str], None], *, in_flight: int
    ) -> None:
        """``in_flight``: how many GETs of a batch run at once."""
        self._native = native
        self._count = count
        self._in_flight = in_flight

    def head(self, url: S3Url) -> ObjectInfo | None:
        self._count("HeadObject")
        headers = self._native.head(url)
        return None if headers is None else _info_from_headers(url, headers)

    def bucket_exists(self, bucket: str) -> bool:
        self._count("HeadBucket")
        return self._native.head(S3Url(bucket, "")) is not None

    def list(self, prefix: S3Url) -> Iterator[Listed]:
        self._count("ListObjectsV2")  # once per listing, however many pages
        for key, size, etag in self._native.list(prefix):
            yield Listed(S3Url(prefix.bucket, key), size, etag)

    def read_into(
        self,
        url: S3Url,
        writer: HashingWriter,
        *,
        info: ObjectInfo | None,
        on_bytes: ProgressCallback | None,
        size_hint: int | None = None,
    ) -> ObjectInfo:
        # The client splits large objects itself; the GET's own headers describe the object.
        self._count("GetObject")
        if info is not None:
            size_hint = info.size
        return _info_from_headers(
            url, self._native.get(url, writer.write, on_bytes, size_hint=size_hint)
        )

    def read_many(self, reads: Sequence[Read]) -> Sequence[ReadOutcome]:
        for _ in reads:
            self._count("GetObject")
        gets = [(read.url, read.writer.write) for read in reads]
        outcomes = self._native.get_many(gets, in_flight=self._in_flight)
        return [
            _info_or_error(read.url, outcome) for read, outcome in zip(reads, outcomes, strict=True)
        ]

    def write_many(self, writes: Sequence[Write]) -> Sequence[WriteOutcome]:
        for _ in writes:
            self._count("PutObject")
        return self._native.put_many(writes, in_flight=self._in_flight)

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
        self,
        url: S3Url,
        data: bytes,
        *,
        metadata: Mapping[str, str],
        condition: WriteCondition | None,
    ) -> None:
        self._count("PutObject")
        conditions = condition.headers() if condition else None
        self._native.put_small(url, data, metadata=metadata, conditions=conditions)

    def get_small(self, url: S3Url) -> tuple[bytes, Digest | None]:
        self._count("GetObject")
        data, headers = self._native.get_small(url)
        return data, recorded_digest(url, headers.get(DIGEST_HEADER))


def _info_or_error(url: S3Url, outcome: Headers | StagerError | OSError) -> ReadOutcome:
    if isinstance(outcome, StagerError | OSError):
        return outcome
    try:
        return _info_from_headers(url, outcome)
    except StagerError as exc:  # a malformed recorded digest
        return exc


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
