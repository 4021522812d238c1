"""A local memo of file digests, so an unchanged file is hashed once.

An entry is keyed by the file's identity and version as the file system
reports them: device, inode, size, mtime and ctime (nanoseconds). Any write
through any path changes mtime/ctime, so a stale entry is never returned for
a changed file. On file systems with whole-second timestamps, a file modified
less than :data:`RACY_WINDOW_NS` before it was hashed is not remembered: a
second write within the same second could leave equal stamps on different
bytes.

SQLite in WAL mode; safe for many threads and processes. A damaged or
unwritable cache file degrades to "no cache", never to a wrong answer.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from stager.digest import Digest
from stager.errors import DigestFormatError

RACY_WINDOW_NS = 2_000_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (dev, ino)
)
"""

FileStamp = tuple[int, int, int, int, int]


def stamp_of(stat: os.stat_result) -> FileStamp:
    """The identity-and-version tuple a digest is remembered under."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class DigestCache:
    """Remembers ``stamp -> digest``; ``path=None`` keeps it in memory only."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._db = self._open(path)

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(path, timeout=10, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
                return db
            except (OSError, sqlite3.Error):
                pass  # an unusable cache only costs re-hashing
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute(_SCHEMA)
        return db

    def get(self, stamp: FileStamp) -> Digest | None:
        dev, ino, size, mtime_ns, ctime_ns = stamp
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT digest FROM digests WHERE dev=? AND ino=? AND size=?"
                    " AND mtime_ns=? AND ctime_ns=?",
                    (dev, ino, size, mtime_ns, ctime_ns),
                ).fetchone()
            except sqlite3.Error:
                return None
        try:
            return Digest.parse(str(row[0])) if row else None
        except DigestFormatError:  # a damaged memo only costs re-hashing
            return None

    def put(self, stamp: FileStamp, digest: Digest, *, now_ns: int | None = None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        coarse_clock = stamp[3] % 1_000_000_000 == 0
        if coarse_clock and now - stamp[3] < RACY_WINDOW_NS:
            return
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute(
                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", (*stamp, str(digest))
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
