"""What a cache holds, listed cheaply enough for every heartbeat.

A worker reports the digests its node's cache holds with its heartbeats
(the dispatcher's replica catalog and data-aware scheduling read them).
Walking ``data/`` whole for each report costs a ``stat`` and a parse per
entry: about 1 s of CPU at 100,000 entries, every few seconds, and far more
on a shared root over NFS.

Here a bucket (``data/<2 hex>/``) is listed again only when its directory
may have changed since it was last listed: its mtime differs, or lies too
close to that listing to tell a later change from an earlier one (a file
system stamps times coarsely; the racy window, :data:`RACY_S`). Names seen
before keep their parsed digest. Every ``full_every_s`` every bucket is
listed again whatever its mtime, which bounds how stale the answer can be
where the clocks of the file system and of this process disagree (a
network file system's server). A name that is not a digest is skipped.

The answer is a hint, as any listing is: an entry may go or come the moment
after. Thread-safe.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stager.digest import Digest
from stager.errors import DigestFormatError

RACY_S = 2.0
FULL_EVERY_S = 60.0


@dataclass(frozen=True)
class _Bucket:
    mtime_ns: int  # the directory's, when it was listed
    listed_at_ns: int  # this process's clock just before the listing
    digests: dict[str, Digest]  # by entry name


class HoldingsIndex:
    """The digests of the entries under ``data_dir``, kept per bucket between calls."""

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        full_every_s: float = FULL_EVERY_S,
    ) -> None:
        """``clock``: wall-clock seconds, comparable with the file system's mtimes."""
        self._data_dir = data_dir
        self._clock = clock
        self._full_every_s = full_every_s
        self._buckets: dict[str, _Bucket] = {}
        self._full_at: float | None = None
        self._lock = threading.Lock()

    def digests(self) -> set[Digest]:
        """The digests of the entries present now (a hint; see the module docstring)."""
        with self._lock:
            now = self._clock()
            # A clock that went back also lists everything again.
            full = self._full_at is None or not 0 <= now - self._full_at < self._full_every_s
            if full:
                self._full_at = now
            present = set()
            try:
                with os.scandir(self._data_dir) as buckets:
                    for bucket in buckets:
                        if bucket.is_dir(follow_symlinks=False):
                            present.add(bucket.name)
                            self._refresh(bucket, full=full)
            except FileNotFoundError:
                pass
            for gone in self._buckets.keys() - present:
                del self._buckets[gone]
            return {digest for b in self._buckets.values() for digest in b.digests.values()}

    def _refresh(self, bucket: os.DirEntry[str], *, full: bool) -> None:
        try:
            mtime_ns = bucket.stat(follow_symlinks=False).st_mtime_ns
        except FileNotFoundError:
            return  # gone: dropped with the others that went
        known = self._buckets.get(bucket.name)
        racy_ns = int(RACY_S * 1e9)
        if (
            not full
            and known is not None
            and known.mtime_ns == mtime_ns
            and mtime_ns < known.listed_at_ns - racy_ns
        ):
            return
        listed_at_ns = int(self._clock() * 1e9)
        try:
            names = os.listdir(bucket.path)
        except FileNotFoundError:
            return
        before = known.digests if known is not None else {}
        digests = {}
        for name in names:
            digest = before.get(name)
            if digest is None:
                try:
                    digest = Digest.from_hex(name)
                except DigestFormatError:
                    continue  # not an entry: nothing the cache published
            digests[name] = digest
        self._buckets[bucket.name] = _Bucket(mtime_ns, listed_at_ns, digests)
