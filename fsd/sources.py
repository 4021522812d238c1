"""The source index: what digest an object that carries none turned out to have.

Most inputs were written by other tools and have no digest in their
metadata. Once such an object is fetched into the cache, the index records
``(endpoint, bucket, key, ETag, size) -> digest``, so the next request for
the same object finds the entry without a transfer. The ETag and the size
are part of the identity: an object that changed is a new source, never
served the old bytes. Records live at ``sources/<id[0:2]>/<id>`` (the id is
the XXH3-128 hex of the identity), written by temp-and-rename after their
entry is published; hits are counted by appending a byte to ``<id>.hits``.
A record whose entry is gone is removed when it is next read and by
recovery. docs/cache-format.md has the rules.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from stager.atomic import atomic_file
from stager.digest import Digest, digest_bytes
from stager.errors import DigestFormatError
from stager.locations import S3Url

SOURCES_DIR = "sources"


@dataclass(frozen=True)
class Source:
    """One version of one object at one endpoint, as a HEAD describes it."""

    endpoint: str
    url: S3Url
    etag: str
    size: int

    @property
    def id(self) -> str:
        identity = "\0".join(
            (self.endpoint, self.url.bucket, self.url.key, self.etag, str(self.size))
        )
        return digest_bytes(identity.encode()).hex


@dataclass(frozen=True)
class SourceRecord:
    digest: Digest
    url: str
    hits: int


class SourceIndex:
    def __init__(self, cache_root: Path, *, synced: bool = True) -> None:
        """``synced``: fsync records (in a cache whose entries are synced)."""
        self.root = cache_root / SOURCES_DIR
        self._synced = synced

    def _path(self, source_id: str) -> Path:
        return self.root / source_id[:2] / source_id

    def find(self, source: Source) -> Digest | None:
        """The digest recorded for ``source``, if any (a damaged record counts as none)."""
        try:
            first = self._path(source.id).read_text().split("\n", 1)[0]
            return Digest.parse(first)
        except (OSError, DigestFormatError):
            return None

    def hit(self, source: Source) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(
                self._path(source.id).with_suffix(".hits"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o644,
            )
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)

    def record(self, source: Source, digest: Digest) -> None:
        """Record (or replace) ``source -> digest``; its entry must already be published."""
        path = self._path(source.id)
        with atomic_file(path, durable=self._synced, sync_directory=False) as handle:
            handle.write(f"{digest}\n{source.url}\n{source.etag}\n{source.size}\n".encode())

    def forget(self, source: Source) -> None:
        path = self._path(source.id)
        path.unlink(missing_ok=True)
        path.with_suffix(".hits").unlink(missing_ok=True)

    def records(self) -> list[SourceRecord]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for bucket in self.root.iterdir():
                for path in bucket.iterdir():
                    if path.suffix == ".hits" or "." in path.name:
                        continue
                    with contextlib.suppress(OSError, DigestFormatError, IndexError):
                        lines = path.read_text().split("\n")
                        hits_file = path.with_suffix(".hits")
                        hits = hits_file.stat().st_size if hits_file.exists() else 0
                        found.append(SourceRecord(Digest.parse(lines[0]), lines[1], hits))
        return found

    def sweep(self, present: set[str]) -> None:
        """Remove the records whose entry (by hex) is gone."""
        with contextlib.suppress(FileNotFoundError):
            for bucket in self.root.iterdir():
                for path in bucket.iterdir():
                    if "." in path.name:
                        if path.suffix == ".hits" and not path.with_suffix("").exists():
                            path.unlink(missing_ok=True)
                        continue
                    try:
                        digest = Digest.parse(path.read_text().split("\n", 1)[0])
                    except (OSError, DigestFormatError):
                        path.unlink(missing_ok=True)
                        continue
                    if digest.hex not in present:
                        path.unlink(missing_ok=True)
