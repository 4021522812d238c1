"""The write-behind outbox: cache entries a node still owes to S3, as a durable journal.

An output kept under the ``mirror`` policy counts as done once it is on
its node and on its peers; each of them then writes it behind to S3 from
its own cache. The outbox is that promise, kept in SQLite beside the cache
(``<cache root>-outbox.sqlite``, synchronous=FULL: a row acknowledged
survives a crash of the process or the machine).

Rows go ``pending`` -> ``written`` (S3 holds the digest at the URL),
``superseded`` (a later attempt of the same task wrote the URL first),
``abandoned`` (the dispatcher had taken the node as lost and planned the
outputs without it: written now, they could replace newer ones) or, when
the entry left the cache before it was written (a node restarted on a
wiped disk), ``lost``: the output must come from another replica or be
recomputed. :class:`WriteBehind` drains the pending rows in a thread,
with bounded retries (backoff up to five minutes between tries, which
never stop: a pending row is a promise, so a long S3 outage delays it but
does not drop it). Adding a row twice is one row. Safe for many threads;
one process owns the writer thread, any may add rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fsd.cache import NodeCache
from stager.digest import Digest
from stager.errors import StagerError, from_os_error
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.publish import publish

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    url TEXT NOT NULL,
    task TEXT NOT NULL,
    generation TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    added_at REAL NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL DEFAULT 0,
    error TEXT,
    UNIQUE (digest, url)
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox(state, next_try_at);
"""
MAX_BACKOFF_S = 300.0


def outbox_path(cache_root: Path) -> Path:
    return cache_root.parent / (cache_root.name + "-outbox.sqlite")


@dataclass(frozen=True)
class OutboxItem:
    id: int
    digest: Digest
    size: int
    url: S3Url
    task: str
    generation: str | None = None  # ``<task id>/<attempt>``: see stager.publish


@dataclass(frozen=True)
class OutboxCounts:
    pending: int
    written: int
    lost: int


class Outbox:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StagerError(f"cannot open the outbox {path}: {exc}") from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def add(
        self,
        digest: Digest,
        size: int,
        url: S3Url,
        task: str,
        *,
        generation: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Promise to write ``digest`` to ``url``, not before ``delay_s``; durable on return."""
        now = self._clock()
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO outbox (digest, size, url, task, generation, added_at,"
                    " next_try_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(digest, url)"
                    " DO UPDATE SET state = 'pending', next_try_at = excluded.next_try_at"
                    " WHERE state = 'lost'",
                    (str(digest), size, str(url), task, generation, now, now + delay_s),
                )
        except sqlite3.Error as exc:
            raise from_os_error(OSError(str(exc)), f"record in the outbox {self.path}") from exc

    def due(self, limit: int = 64) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, digest, size, url, task, generation FROM outbox"
                " WHERE state = 'pending' AND next_try_at <= ? ORDER BY id LIMIT ?",
                (self._clock(), limit),
            ).fetchall()
        return [
            OutboxItem(r[0], Digest.parse(r[1]), r[2], S3Url.parse(r[3]), r[4], r[5]) for r in rows
        ]

    def pending_digests(self) -> set[Digest]:
        with self._lock:
            rows = self._db.execute("SELECT digest FROM outbox WHERE state = 'pending'")
            return {Digest.parse(row[0]) for row in rows}

    def abandon(self) -> int:
        """Drop every pending row (their outputs were planned for without this node)."""
        with self._tx() as db:
            cursor = db.execute("UPDATE outbox SET state = 'abandoned' WHERE state = 'pending'")
            return cursor.rowcount

    def hurry(self) -> None:
        """Every pending row is due now (the node is about to go)."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET next_try_at = 0 WHERE state = 'pending'")

    def written(self, item: OutboxItem) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET state = 'written', error = NULL WHERE id = ?", (item.id,))

    def superseded(self, item: OutboxItem) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET state = 'superseded' WHERE id = ?", (item.id,))

    def lost(self, item: OutboxItem, why: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET state = 'lost', error = ? WHERE id = ?", (why, item.id))

    def retry_later(self, item: OutboxItem, error: str) -> None:
        with self._tx() as db:
            tries = db.execute(
                "UPDATE outbox SET tries = tries + 1, error = ? WHERE id = ? RETURNING tries",
                (error, item.id),
            ).fetchone()[0]
            wait = min(MAX_BACKOFF_S, 2.0 ** min(tries, 16))
            db.execute(
                "UPDATE outbox SET next_try_at = ? WHERE id = ?", (self._clock() + wait, item.id)
            )

    def counts(self) -> OutboxCounts:
        with self._lock:
            rows = dict(self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        return OutboxCounts(rows.get("pending", 0), rows.get("written", 0), rows.get("lost", 0))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class WriteBehind:
    """Drains an outbox into S3 from the node cache, in one thread.

    Pending entries are pinned while this runs, so the cache does not
    evict what it still owes. ``on_written`` hears of each write (a
    worker tells the dispatcher that S3 now holds the output).
    """

    def __init__(
        self,
        outbox: Outbox,
        cache: NodeCache,
        store: ObjectStore,
        *,
        on_written: Callable[[OutboxItem], None] = lambda item: None,
        log: Callable[[str], None] = lambda line: None,
        poll_s: float = 0.2,
    ) -> None:
        self.outbox = outbox
        self.cache = cache
        self.store = store
        self.on_written = on_written
        self.log = log
        self.poll_s = poll_s
        self.written_bytes = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="write-behind", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (a row was just added)."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        pins: dict[Digest, contextlib.ExitStack] = {}
        try:
            while not self._stop.is_set():
                self._hold_pins(pins)
                for item in self.outbox.due():
                    if self._stop.is_set():
                        return
                    self.write_one(item)
                self._wake.wait(self.poll_s)
                self._wake.clear()
        finally:
            for pin in pins.values():
                pin.close()

    def _hold_pins(self, pins: dict[Digest, contextlib.ExitStack]) -> None:
        """Pin what is pending and was not pinned yet; unpin what is no longer pending."""
        pending = self.outbox.pending_digests()
        for digest in set(pins) - pending:
            pins.pop(digest).close()
        for digest in pending - set(pins):
            pin = contextlib.ExitStack()
            pin.enter_context(self.cache.pinned([digest]))
            pins[digest] = pin

    def write_one(self, item: OutboxItem) -> None:
        """Write one row behind: HEAD first, so a twin's write costs one request."""
        try:
            there = self.store.head(item.url)
            if there is None or there.digest != item.digest or there.size != item.size:
                entry = self.cache.lookup(item.digest)
                if entry is None:
                    self.outbox.lost(item, "the entry left the node cache before it was written")
                    self.log(f"write-behind: {item.url} lost (not in the cache any more)")
                    return
                published = publish(
                    self.store,
                    entry,
                    item.url,
                    digest=item.digest,
                    size=item.size,
                    task=item.task,
                    generation=item.generation,
                )
                if published.superseded:  # a later run of the task wrote it: ours is stale
                    self.outbox.superseded(item)
                    return
                self.written_bytes += item.size
        except (StagerError, OSError) as exc:
            why = exc.one_line() if isinstance(exc, StagerError) else str(exc)
            self.outbox.retry_later(item, why)
            self.log(f"write-behind: {item.url} failed, will retry: {why}")
            return
        self.outbox.written(item)
        self.on_written(item)
