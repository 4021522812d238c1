"""Content digests: XXH3-128, written ``xxh3-128:<32 lowercase hex>``.

:class:`Digest` is the one type that holds a digest: parsed once at the edge
(a spec, a manifest, object metadata, a cache entry's name), compared and
hashed as a value, written back with ``str()``. No other module splits or
joins digest strings.

A digest is always computed while the bytes stream past (on their way to a
file, a socket or an upload), never by a second read of something already
written. :class:`Hasher` is the accumulator; :class:`HashingWriter` and
:func:`digest_stream` are the two ways bytes pass through one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import xxhash

from stager.errors import DigestFormatError, IntegrityError

ALGORITHM = "xxh3-128"
DIGEST_BYTES = 16
_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
READ_CHUNK_BYTES = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A content digest: the algorithm's name and the hash's bytes.

    Only valid values can be built: :meth:`parse` for text
    (``xxh3-128:<hex>``, any case, surrounding blanks ignored) and
    :meth:`from_hex` for a cache entry's name; both raise
    :class:`~stager.errors.DigestFormatError` otherwise.
    """

    value: bytes
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM or len(self.value) != DIGEST_BYTES:
            raise DigestFormatError(f"not an {ALGORITHM} digest: {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, hexdigest = text.strip().lower().partition(":")
        if not sep or algorithm != ALGORITHM or not _HEX_RE.match(hexdigest):
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise DigestFormatError(f"malformed digest {shown!r}")
        return cls(bytes.fromhex(hexdigest))

    @classmethod
    def from_hex(cls, hexdigest: str) -> Digest:
        """The digest whose hex form is ``hexdigest`` (a cache entry's name)."""
        if not _HEX_RE.match(hexdigest):
            raise DigestFormatError(f"not a digest's hex form: {hexdigest[:80]!r}")
        return cls(bytes.fromhex(hexdigest))

    @property
    def hex(self) -> str:
        return self.value.hex()

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value.hex()}"

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"


class Hasher:
    """Accumulates bytes and counts them; ``digest`` may be read at any time."""

    def __init__(self) -> None:
        self._state = xxhash.xxh3_128()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._state.update(data)
        self.size += len(data)

    @property
    def digest(self) -> Digest:
        return Digest(self._state.digest())


def digest_bytes(data: bytes) -> Digest:
    hasher = Hasher()
    hasher.update(data)
    return hasher.digest


def digest_stream(stream: BinaryIO, chunk_bytes: int = READ_CHUNK_BYTES) -> tuple[Digest, int]:
    """Read ``stream`` to its end once; return (digest, size)."""
    hasher = Hasher()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    while True:
        count = stream.readinto(view)  # type: ignore[attr-defined]
        if not count:
            break
        hasher.update(view[:count])
    return hasher.digest, hasher.size


class HashingWriter:
    """A write-only, non-seekable file object that hashes what it forwards.

    Being non-seekable matters: s3transfer then delivers the parts of a
    parallel ranged download strictly in order, so the digest is computed as
    the bytes arrive and the file is never read back.
    """

    def __init__(self, target: BinaryIO | None) -> None:
        self._target = target  # None: the bytes are only hashed
        self.hasher = Hasher()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        return len(data) if self._target is None else self._target.write(data)

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        if self._target is not None:
            self._target.flush()


def once_more_on_mismatch(fetch: Callable[[], T]) -> T:
    """Run ``fetch``; after a digest or size mismatch, run it once more, afresh.

    The object may have been replaced while its bytes were in flight; a
    second mismatch is damage and raises :class:`~stager.errors.IntegrityError`.
    Every verified fetch (pull, cache fill) follows this one rule.
    """
    try:
        return fetch()
    except IntegrityError:
        return fetch()
