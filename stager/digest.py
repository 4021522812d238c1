"""Content digests: XXH3-128, written ``xxh3-128:<32 lowercase hex>``.

A digest is always computed while the bytes stream past (on their way to a
file, a socket or an upload), never by a second read of something already
written. :class:`Hasher` is the accumulator; :class:`HashingWriter` and
:func:`digest_stream` are the two ways bytes pass through one.
"""

from __future__ import annotations

import re
from typing import BinaryIO

import xxhash

from stager.errors import IntegrityError

ALGORITHM = "xxh3-128"
_DIGEST_RE = re.compile(r"^xxh3-128:[0-9a-f]{32}$")
READ_CHUNK_BYTES = 1024 * 1024


def is_digest(text: str) -> bool:
    """True when ``text`` is a well-formed digest string."""
    return bool(_DIGEST_RE.match(text))


def parse_digest(text: str) -> str:
    """Return ``text`` normalized to lower case, or raise if it is not a digest."""
    normalized = text.strip().lower()
    if not is_digest(normalized):
        raise IntegrityError(
            f"malformed digest {text!r}",
            hint="a digest is written xxh3-128: followed by 32 hex digits",
        )
    return normalized


class Hasher:
    """Accumulates bytes and counts them; ``digest`` may be read at any time."""

    def __init__(self) -> None:
        self._state = xxhash.xxh3_128()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._state.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return f"{ALGORITHM}:{self._state.hexdigest()}"


def digest_bytes(data: bytes) -> str:
    hasher = Hasher()
    hasher.update(data)
    return hasher.digest


def digest_stream(stream: BinaryIO, chunk_bytes: int = READ_CHUNK_BYTES) -> tuple[str, int]:
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

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self.hasher = Hasher()

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return self._target.write(data)

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self._target.flush()
