"""Where bytes live: S3 locations and safe relative paths.

``S3Url`` is the parsed form of ``s3://bucket/key``. ``safe_relative_path``
is the one check every path taken from outside (an S3 key mapped to local
disk, later task specs and archives) passes before any I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from stager.errors import InvalidUrlError, UnsafePathError

# S3 bucket naming rules (the subset every S3 implementation accepts).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Url:
    """An S3 location. ``key`` may be empty (the whole bucket) or end in '/'."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str) -> S3Url:
        if not text.startswith("s3://"):
            raise InvalidUrlError(f"not an S3 URL: {text!r}")
        bucket, _, key = text[len("s3://") :].partition("/")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise InvalidUrlError(
                f"invalid bucket name {bucket!r} in {text!r}",
                hint="bucket names are 3-63 characters: lower-case letters, digits, '.', '-'",
            )
        if "\x00" in key or "//" in key:
            raise InvalidUrlError(f"invalid key in {text!r}", hint="remove empty path parts")
        if any(part in (".", "..") for part in key.split("/")):
            raise InvalidUrlError(
                f"the key in {text!r} has a '.' or '..' part",
                hint="S3 servers resolve such keys differently; write the key without them",
            )
        return cls(bucket, key)

    @property
    def is_prefix(self) -> bool:
        """True for a bucket root or a key ending in '/'."""
        return self.key == "" or self.key.endswith("/")

    def as_prefix(self) -> S3Url:
        return self if self.is_prefix else S3Url(self.bucket, self.key + "/")

    def child(self, relative: str) -> S3Url:
        """The location ``relative`` below this prefix."""
        return S3Url(self.bucket, self.as_prefix().key + relative)

    def relative_to(self, prefix: S3Url) -> str:
        """This key's path below ``prefix`` (which must contain it)."""
        base = prefix.as_prefix().key
        if self.bucket != prefix.bucket or not self.key.startswith(base):
            raise InvalidUrlError(f"{self} is not below {prefix}")
        return self.key[len(base) :]

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def safe_relative_path(text: str, *, what: str = "path") -> PurePosixPath:
    """Check ``text`` component by component and return it normalized.

    Refused: empty paths, absolute paths, NUL bytes, backslashes, and any
    ``..`` component. ``.`` and empty components are dropped. Nothing is
    touched on disk: this runs before any I/O.
    """
    if "\x00" in text:
        raise UnsafePathError(f"{what} {text!r} contains a NUL byte", hint="remove the NUL byte")
    if "\\" in text:
        raise UnsafePathError(
            f"{what} {text!r} contains a backslash", hint="separate path parts with '/'"
        )
    if text.startswith("/"):
        raise UnsafePathError(
            f"{what} {text!r} is absolute",
            hint="write it relative to its root, without a leading '/'",
        )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"{what} {text!r} is empty", hint="give a path")
    if ".." in parts:
        raise UnsafePathError(f"{what} {text!r} climbs out of its root with '..'")
    return PurePosixPath(*parts)
