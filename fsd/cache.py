"""The content-addressed node cache (docs/cache-format.md is its contract).

One directory of verified entries named by digest, shared by every process
on a node (or, in shared mode, by every node mounting it). Guarantees:

- an entry appears only complete and verified (rule 2);
- concurrent requests for one digest cause one fetch (rule 7);
- pinned entries are never evicted (rule 6); space is reserved before a
  fetch starts, and an input that cannot fit fails before any byte moves;
- an entry touched through a hard link is re-verified before reuse (rule 3);
- a killed process leaves at most a temp file and a reservation, which
  recovery removes once the process is known dead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_module
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsd import rangelocks
from fsd.eviction import EntryState, plan_eviction
from fsd.groupcommit import GroupCommit
from fsd.holdings import HoldingsIndex
from fsd.ledger import Ledger, Reservation, read_ledger, write_ledger
from fsd.locks import LinkLock, Lock
from fsd.materialize import Materialize, materialize
from fsd.pins import FilePins, Pins, RangePins
from fsd.rangelocks import LockTable, RangeLock
from fsd.rootformat import Tier, open_root
from fsd.seals import SEALS_DIR, Seals, current_boot_id
from fsd.sources import SOURCES_DIR, Source, SourceIndex, SourceRecord
from stager.atomic import TEMP_MARKER, Fsync, atomic_file, fsync_directory
from stager.digest import (
    Digest,
    HashingWriter,
    digest_bytes,
    digest_stream,
    once_more_on_mismatch,
)
from stager.errors import (
    CacheFullError,
    DigestFormatError,
    IntegrityError,
    StagerError,
    from_os_error,
)
from stager.owner import Owner
from stager.units import format_size

SMALL_ENTRY_BYTES = 1024 * 1024  # below this, space is accounted at publication (rule 5)
MARKER_MTIME_NS = 1_000_000_000
READ_ONLY = 0o444

Fill = Callable[[HashingWriter], object]


@dataclass(frozen=True)
class _SmallInsert:
    staging: Path  # verified, fsynced, read-only, in tmp/
    final: Path
    size: int


@dataclass(frozen=True)
class Wanted:
    """One entry to have: by its digest or, with none known, by its source (or
    another flight key, such as its URL), as :meth:`NodeCache.ensure` takes it."""

    digest: Digest | None
    size: int
    source: Source | None = None
    flight_key: str = ""

    @property
    def name(self) -> str:
        """The flight's name: its entry lock's, and in a batch's claim."""
        if self.digest is not None:
            return self.digest.hex
        return "src-" + (
            self.source.id if self.source else digest_bytes(self.flight_key.encode()).hex
        )


@dataclass(frozen=True)
class Staged:
    """A batch's entry, verified and read-only in ``tmp/``, ready to publish."""

    path: Path
    digest: Digest
    size: int
    source: Source | None = None  # recorded in the source index once published


@dataclass(frozen=True)
class CacheStats:
    entries: int
    used_bytes: int
    reserved_bytes: int
    quota_bytes: int
    pinned_entries: int
    fetches: int
    source_records: int  # objects without a digest, found by their source (see sources.py)
    source_hits: int


def digest_of_entry(entry: Path) -> Digest:
    """The digest of the bytes in an entry (``data/<hex>``)."""
    return Digest.from_hex(entry.name)


class NodeCache:
    """A cache root. Safe for many threads and processes at once."""

    def __init__(
        self,
        root: Path,
        *,
        quota_bytes: int,
        stale_after_s: float = 600.0,
        pin_stale_after_s: float = 86400.0,
        reserve_wait_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        recover: bool = True,
        tier: Tier | None = None,
        fsync: Fsync | None = None,
        boot_id: str | None = current_boot_id(),
    ) -> None:
        """Open (or initialize) the cache at ``root``.

        ``recover=False`` skips the sweep at open (rule 9): for a cache that
        others maintain and this process only reads, such as an NFS head
        opened by every task on every node. ``tier``: the root's tier
        (:mod:`fsd.rootformat`), made so if the root is new, refused if it is
        another; None takes the root's (a new one: scratch). ``fsync`` and
        ``boot_id`` are seams for tests (a reboot is another boot id); without
        a boot id to tell a reboot by, every entry is synced.
        """
        self.root = root
        self.quota_bytes = quota_bytes
        self.reserve_wait_s = reserve_wait_s
        self._sleep = sleep
        self.stale_after_s = stale_after_s
        self.pin_stale_after_s = pin_stale_after_s
        self._clock = clock
        self.tier = self._open_layout(tier)
        self._fsync = fsync
        # Whether entries are fsynced (rule 2): a shared root's always; a scratch
        # root's never, their seals naming the boot instead.
        self.synced = self.tier is Tier.SHARED or boot_id is None
        self._seals = Seals(root, clock, boot_id=None if self.synced else boot_id)
        self._sources = SourceIndex(root, synced=self.synced)
        self._small_publications: GroupCommit[_SmallInsert, bool] = GroupCommit(self._publish_small)
        # Its clock is compared with the kernel's directory mtimes: the real one, not ``clock``.
        self._holdings = HoldingsIndex(root / "data")
        # A scratch root is opened by one host's processes only: the kernel keeps its
        # locks and pins (fsd.rangelocks). A shared root's are files (fsd.locks, fsd.pins).
        self._lock_table: LockTable | None = None
        self._pins: Pins
        if self.tier is Tier.SCRATCH and rangelocks.usable(root / "locks" / "table"):
            self._lock_table = LockTable(root / "locks" / "table")
            self._pins = RangePins(LockTable(root / "locks" / "pins"))
        else:
            self._pins = FilePins(
                root / "pins",
                lambda owner, at: self._is_stale(owner, at, self.pin_stale_after_s),
            )
        if recover:
            self.recover()

    # -- layout -------------------------------------------------------------------

    def _open_layout(self, tier: Tier | None) -> Tier:
        opened = open_root(self.root, tier, own_names=_CACHE_NAMES)
        try:
            for name in ("data", "tmp", "locks", "pins", SEALS_DIR, SOURCES_DIR):
                (self.root / name).mkdir(exist_ok=True)
        except OSError as exc:
            raise from_os_error(exc, f"open cache {self.root}") from exc
        return opened

    def entry_path(self, digest: Digest) -> Path:
        hexdigest = digest.hex
        return self.root / "data" / hexdigest[:2] / hexdigest

    def _cache_lock(self) -> Lock:
        return self._entry_lock("cache")

    def _ledger(self) -> Path:
        return self.root / "ledger.json"

    # -- reading ------------------------------------------------------------------

    def lookup(self, digest: Digest) -> Path | None:
        """The entry for ``digest`` if it is present and intact; records the use.

        Intact means sealed in its current state (:mod:`fsd.seals`); an entry
        that is not is re-hashed, under its lock, and sealed or dropped.
        """
        path = self.entry_path(digest)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        if self._seals.use(digest.hex, info):
            return path
        with self._entry_lock(digest.hex).holding():  # a link in progress, or damage
            return self._lookup_locked(digest)

    def _lookup_locked(self, digest: Digest) -> Path | None:
        """:meth:`lookup` for a caller that holds the entry's lock."""
        path = self.entry_path(digest)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        if not stat_module.S_ISREG(info.st_mode):  # replaced by a link or a folder
            self._drop(path, 0)
            return None
        if self._seals.use(digest.hex, info) or self._reverify(digest, path):
            return path
        return None

    def _entry_lock(self, name: str) -> Lock:
        """One entry's lock (or a source's flight's) for fetches, links and re-hashes;
        ``cache`` is the cache lock (no hex digest is named so). A byte of
        ``locks/table`` in a scratch root, ``locks/<name>.lock`` in a shared one."""
        if self._lock_table is not None:
            return RangeLock(self._lock_table, name, clock=self._clock, sleep=self._sleep)
        return LinkLock(
            self.root / "locks" / f"{name}.lock",
            stale_after_s=self.stale_after_s,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _mark(self, path: Path) -> None:
        """Give a staged entry the marker mtime that caches of format 2 before seals check."""
        os.utime(path, ns=(int(self._clock() * 1e9), MARKER_MTIME_NS))

    def _reverify(self, digest: Digest, path: Path) -> bool:
        """Re-hash an entry something may have written to; seal it if intact, else drop it."""
        try:
            with path.open("rb") as handle:
                actual, size = digest_stream(handle)
        except FileNotFoundError:
            return False
        if actual == digest:
            os.chmod(path, READ_ONLY)
            self._mark(path)
            self._seals.seal(digest.hex, path)
            return True
        self._drop(path, size)
        return False

    # -- sandboxes ------------------------------------------------------------------

    def materialize(self, entry: Path, dest: Path, mode: Materialize) -> Materialize:
        """Show ``entry`` at ``dest`` (see :func:`fsd.materialize.materialize`).

        A hard link changes the entry's ctime: it is sealed again, under the
        entry's lock, if the state before the link was sealed.
        """
        if mode is not Materialize.LINK:
            return materialize(entry, dest, mode)
        with self._entry_lock(entry.name).holding():
            sealed = self._seals.holds(entry.name, entry.stat())
            used = materialize(entry, dest, mode)
            if sealed and used is Materialize.LINK:
                self._seals.seal(entry.name, entry)
        return used

    def release_links(self, links: Sequence[tuple[Path, Digest]]) -> None:
        """Remove hard links to entries from a finished sandbox, keeping the seals true.

        Each link's inode is the entry's: if its state is still the sealed
        one (the task neither wrote nor changed it), the entry is sealed
        again after the removal; if not, it is left unsealed and re-hashed
        before its next use. Links already gone are skipped.
        """
        for link, digest in links:
            with self._entry_lock(digest.hex).holding():
                try:
                    sealed = self._seals.holds(digest.hex, link.lstat())
                    link.unlink()
                except FileNotFoundError:
                    continue
                entry = self.entry_path(digest)
                with contextlib.suppress(FileNotFoundError):
                    if sealed:
                        self._seals.seal(digest.hex, entry)

    def _drop(self, path: Path, size: int) -> None:
        """Remove a damaged entry and note it in the damage journal (for ``verify``)."""
        with self._cache_lock().holding():
            self._seals.remove(path.name)
            try:
                path.unlink()
            except FileNotFoundError:
                return
            except IsADirectoryError:  # a folder put where an entry was
                shutil.rmtree(path, ignore_errors=True)
            ledger = read_ledger(self._ledger())
            ledger.used_bytes = max(0, ledger.used_bytes - size)
            write_ledger(self._ledger(), ledger)
            with contextlib.suppress(OSError), self._journal.open("a") as journal:
                journal.write(f"{digest_of_entry(path)}\n")

    @property
    def _journal(self) -> Path:
        return self.root / "damaged.log"

    def _take_journal(self) -> list[Digest]:
        """The entries dropped as damaged since the last call (the journal is emptied)."""
        with self._cache_lock().holding():
            try:
                lines = self._journal.read_text().split()
            except FileNotFoundError:
                return []
            self._journal.unlink()
        damaged = []
        for line in lines:
            with contextlib.suppress(DigestFormatError):  # a torn line is not a digest
                damaged.append(Digest.parse(line))
        return damaged

    # -- inserting ----------------------------------------------------------------

    def ensure(
        self,
        digest: Digest | None,
        size: int,
        fill: Fill,
        *,
        flight_key: str = "",
        source: Source | None = None,
    ) -> Path:
        """The entry for ``digest``, fetched by ``fill`` unless present (single flight).

        ``fill`` writes the bytes into the writer it is given. With ``digest``
        None (a source with no recorded digest) the entry is named by the
        digest of what ``fill`` wrote, and ``flight_key`` (e.g. the source
        URL) names the single flight. A mismatch is fetched once more, then
        raised as :class:`IntegrityError`.

        ``source`` (an object with no recorded digest, as a HEAD described
        it) names the single flight instead, and the source index: a source
        fetched before is found there without calling ``fill``, and one
        fetched now is recorded once its entry is published.
        """
        self._refuse_beyond_quota(size)
        name = Wanted(digest, size, source, flight_key).name
        with self._entry_lock(name).holding(keep_fresh=True):
            # A hit needs no look at batches' claims; a miss waits for the batch that
            # may be fetching it, then looks again.
            if (found := self._present(digest, source)) is not None:
                return found
            if self._await_claims(name) and (found := self._present(digest, source)):
                return found
            entry = self._insert(digest, size, fill)
            if source is not None:
                self._sources.record(source, digest_of_entry(entry))
            return entry

    def insert(self, size: int, fill: Fill) -> Path:
        """The entry for bytes no one else fetches (a task's output), named by their digest.

        No flight to share, so no flight lock and no look at batches' claims:
        if the same bytes are published meanwhile, the twin is kept and this
        copy dropped.
        """
        self._refuse_beyond_quota(size)
        return self._insert(None, size, fill)

    def _refuse_beyond_quota(self, size: int) -> None:
        if size > self.quota_bytes:
            raise CacheFullError(
                f"{format_size(size)} can never fit the cache quota "
                f"of {format_size(self.quota_bytes)}"
            )

    def known(self, wanted: Wanted) -> Path | None:
        """The entry ``wanted`` names if the cache has it intact (by digest, or by its
        source in the source index); records the use. Takes no lock unless it re-hashes."""
        if wanted.digest is not None:
            return self.lookup(wanted.digest)
        if wanted.source is None or (digest := self._sources.find(wanted.source)) is None:
            return None
        found = self.lookup(digest)
        if found is not None:
            self._sources.hit(wanted.source)
        return found

    # -- batches of small entries (fsd.batchinsert) ----------------------------------

    def claim(self, wanted: Sequence[Wanted]) -> tuple[str | None, list[Wanted]]:
        """Claim the flights of ``wanted`` (small entries) that no one else has under
        way, with the room they need, in one cache-lock hold; return the claim's key
        (None: no claim) and what it claims. What it leaves is another's flight, or
        found no room without waiting: fetch those one by one (:meth:`ensure`).

        The claim is a reservation that names its flights (the ledger): other
        batches skip them, and :meth:`ensure` waits for them.
        """
        with self._cache_lock().holding():
            ledger = read_ledger(self._ledger())
            self._drop_stale_reservations(ledger)
            taken = {name for r in ledger.reservations.values() for name in r.names}
            mine = [
                w
                for w in wanted
                if w.name not in taken
                and not self._entry_lock(w.name).busy()  # a single flight under way
                and not (w.digest is not None and self.entry_path(w.digest).exists())
                and not (w.source is not None and self._sources.find(w.source) is not None)
            ]
            size = sum(w.size for w in mine)
            if not mine or not self._make_room(ledger, size):
                return None, []
            key = str(Owner.current())
            names = tuple(w.name for w in mine)
            ledger.reservations[key] = Reservation(size, self._clock(), names)
            write_ledger(self._ledger(), ledger)
        return key, mine

    def publish_claimed(self, key: str, staged: Sequence[Staged]) -> list[Path | StagerError]:
        """Publish a claim's verified entries and end the claim, in one cache-lock hold;
        each entry's path (or why it could not be published), in order."""
        published: list[Path | StagerError] = []
        with self._cache_lock().holding():
            ledger = read_ledger(self._ledger())
            for entry in staged:
                final = self.entry_path(entry.digest)
                try:
                    if final.exists():  # a twin (the same bytes from another source)
                        entry.path.unlink()
                    else:
                        _replace_into(entry.path, final)
                        self._seals.seal(final.name, final)
                        ledger.used_bytes += entry.size
                        ledger.fetches += 1
                    if entry.source is not None:  # before the claim ends: no one fetches it
                        self._sources.record(entry.source, entry.digest)
                    published.append(final)
                except OSError as exc:
                    entry.path.unlink(missing_ok=True)
                    published.append(from_os_error(exc, f"publish {final}"))
            ledger.reservations.pop(key, None)
            write_ledger(self._ledger(), ledger)
        for directory in sorted({p.parent for p in published if isinstance(p, Path)}):
            self._sync_directory(directory)
        return published

    def ready_staged(self, path: Path, fd: int) -> None:
        """Make a batch's verified temp file an entry-to-be: read-only, marked, and
        synced if entries are (before the caller closes ``fd``)."""
        if self.synced:
            (self._fsync or os.fsync)(fd)
        os.chmod(path, READ_ONLY)
        self._mark(path)

    def end_claim(self, key: str) -> None:
        """End a claim that publishes nothing (its fetch failed)."""
        self._settle(key, published_bytes=0)

    def _present(self, digest: Digest | None, source: Source | None) -> Path | None:
        """Under the flight's lock: the entry, found by digest or by the source index."""
        if digest is not None and (found := self._lookup_locked(digest)) is not None:
            return found
        return self._from_source_index(source) if source is not None else None

    def _await_claims(self, name: str) -> bool:
        """Wait while a live batch of another process claims flight ``name``; True if
        it waited."""
        delay, waited = 0.001, False
        while True:
            ledger = read_ledger(self._ledger())  # replaced by rename: no lock needed to read
            if not any(
                name in r.names and not self._is_stale(key, r.at, self.stale_after_s)
                for key, r in ledger.reservations.items()
            ):
                return waited
            self._sleep(delay)
            delay, waited = min(delay * 2, 0.05), True

    def _from_source_index(self, source: Source) -> Path | None:
        known = self._sources.find(source)
        if known is None:
            return None
        found = self._lookup_locked(known)
        if found is None:  # the entry went (evicted, damaged): so does the record
            self._sources.forget(source)
            return None
        self._sources.hit(source)
        return found

    def _insert(self, digest: Digest | None, size: int, fill: Fill) -> Path:
        if size < SMALL_ENTRY_BYTES and self._fits_now(size):
            return self._insert_small(digest, size, fill)
        key = self._reserve(size)
        try:
            return self._publish(*self._stage_twice(digest, size, fill, key), size, key)
        except BaseException:
            self._settle(key, published_bytes=0)  # a published insert settled itself
            raise

    def _stage(self, digest: Digest | None, size: int, fill: Fill, key: str) -> tuple[Path, Digest]:
        """Write the bytes to a read-only staging file in ``tmp/``; check size and digest."""
        temp = self.root / "tmp" / f"{name_for(digest)}.{key}{TEMP_MARKER}"
        staging = self.root / "tmp" / f"{name_for(digest)}.{key}.ready"
        # The staging name is renamed again into data/, whose directory is then
        # fsynced (if entries are): syncing tmp/ too would buy nothing.
        with atomic_file(
            staging,
            mode=READ_ONLY,
            temp=temp,
            before_publish=self._mark,
            durable=self.synced,
            sync_directory=False,
            fsync=self._fsync,
        ) as handle:
            writer = HashingWriter(handle)
            fill(writer)
            got = writer.hasher
            if got.size != size:
                raise IntegrityError(f"fetched {got.size} bytes for an input of {size}")
            if digest is not None and got.digest != digest:
                raise IntegrityError(f"fetched bytes hash to {got.digest}, expected {digest}")
        return staging, got.digest

    def _stage_twice(
        self, digest: Digest | None, size: int, fill: Fill, key: str
    ) -> tuple[Path, Digest]:
        """Stage; a mismatch is fetched once more, then raised as IntegrityError."""
        return once_more_on_mismatch(lambda: self._stage(digest, size, fill, key))

    def _publish(self, staging: Path, got_digest: Digest, size: int, key: str) -> Path:
        """Rename a staged entry into ``data/`` and settle reservation ``key``."""
        final = self.entry_path(got_digest)
        try:
            if final.exists():  # another flight (unknown digest) got there first
                staging.unlink()
                self._settle(key, published_bytes=0)
                return final
            _replace_into(staging, final)
            self._sync_directory(final.parent)
            self._seals.seal(final.name, final)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            raise from_os_error(exc, f"publish {final}") from exc
        self._settle(key, published_bytes=size)
        return final

    def _sync_directory(self, directory: Path) -> None:
        if self.synced:
            fsync_directory(directory, self._fsync)

    def _fits_now(self, size: int) -> bool:
        """A lock-free hint: the ledger (replaced by rename) shows room without evicting."""
        ledger = read_ledger(self._ledger())
        return ledger.used_bytes + ledger.reserved_bytes + size <= self.quota_bytes

    def _insert_small(self, digest: Digest | None, size: int, fill: Fill) -> Path:
        """A small entry: bytes first, then one cache-lock hold makes room, counts, publishes.

        That hold is shared: small inserts of this process's other threads
        that are ready at the same time publish in the same batch (group
        commit). If pinned entries hold the room, fall back to reserving
        (and waiting) like any insert.
        """
        staging, got_digest = self._stage_twice(digest, size, fill, str(Owner.current()))
        try:
            final = self.entry_path(got_digest)
            published = self._small_publications.submit(_SmallInsert(staging, final, size))
            if published:
                staging.unlink(missing_ok=True)  # a twin published first
                self._sync_directory(final.parent)
                return final
            reservation = self._reserve(size)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        try:
            return self._publish(staging, got_digest, size, reservation)
        except BaseException:
            self._settle(reservation, published_bytes=0)
            raise

    def _publish_small(self, batch: Sequence[_SmallInsert]) -> list[bool | BaseException]:
        """Under one cache-lock hold: make room for, count and publish staged small
        entries (False: no room without waiting; the thread then reserves)."""
        outcomes: list[bool | BaseException] = []
        with self._cache_lock().holding():
            ledger = read_ledger(self._ledger())
            counted = 0
            for insert in batch:
                try:
                    if insert.final.exists():  # a twin published first
                        outcomes.append(True)
                    elif not self._make_room(ledger, insert.size):
                        outcomes.append(False)
                    else:
                        _replace_into(insert.staging, insert.final)
                        self._seals.seal(insert.final.name, insert.final)
                        ledger.used_bytes += insert.size
                        ledger.fetches += 1
                        counted += 1
                        outcomes.append(True)
                except OSError as exc:
                    outcomes.append(from_os_error(exc, f"publish {insert.final}"))
            if counted:
                write_ledger(self._ledger(), ledger)
        return outcomes

    def _reserve(self, size: int) -> str:
        """Reserve ``size`` bytes, evicting LRU unpinned entries if needed; return the key.

        When pinned entries and other reservations hold the room, wait for
        them (pins end with their tasks) up to ``reserve_wait_s``, then fail.
        """
        deadline = self._clock() + self.reserve_wait_s
        delay = 0.01
        while True:
            key = self._try_reserve(size)
            if key is not None:
                return key
            if self._clock() >= deadline:
                ledger = read_ledger(self._ledger())
                raise CacheFullError(
                    f"cannot make room for {format_size(size)}: "
                    f"{format_size(ledger.used_bytes)} cached and "
                    f"{format_size(ledger.reserved_bytes)} reserved of a "
                    f"{format_size(self.quota_bytes)} quota, and the rest is pinned"
                )
            self._sleep(delay)
            delay = min(delay * 2, 1.0)

    def _make_room(self, ledger: Ledger, size: int) -> bool:
        """Under the cache lock: evict LRU unpinned entries until ``size`` more fits."""
        self._drop_stale_reservations(ledger)
        need = ledger.used_bytes + ledger.reserved_bytes + size - self.quota_bytes
        victims = plan_eviction(self._scan(), need) if need > 0 else []
        if victims is None:
            return False
        for victim in victims:
            with contextlib.suppress(FileNotFoundError):
                (self.root / "data" / victim.hex[:2] / victim.hex).unlink()
                ledger.used_bytes -= victim.size_bytes
        return True

    def _try_reserve(self, size: int) -> str | None:
        key = str(Owner.current())
        with self._cache_lock().holding():
            ledger = read_ledger(self._ledger())
            if not self._make_room(ledger, size):
                return None
            ledger.reservations[key] = Reservation(size, self._clock())
            write_ledger(self._ledger(), ledger)
        return key

    def _settle(self, key: str, *, published_bytes: int) -> None:
        """Drop reservation ``key``; account a published entry of ``published_bytes``."""
        with self._cache_lock().holding():
            ledger = read_ledger(self._ledger())
            ledger.reservations.pop(key, None)
            if published_bytes:
                ledger.used_bytes += published_bytes
                ledger.fetches += 1
            write_ledger(self._ledger(), ledger)

    def _drop_stale_reservations(self, ledger: Ledger) -> None:
        for key, reservation in list(ledger.reservations.items()):
            if self._is_stale(key, reservation.at, self.stale_after_s):
                del ledger.reservations[key]

    def _is_stale(self, owner_text: str, refreshed_at: float, max_age_s: float) -> bool:
        owner = Owner.parse(owner_text)
        alive = owner.is_alive() if owner is not None else False
        if alive is None:
            return self._clock() - refreshed_at > max_age_s
        return not alive

    # -- pins -----------------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self, digests: list[Digest]) -> Iterator[None]:
        """Pin ``digests`` (present or not yet) for the duration of the block."""
        if not digests:  # nothing to pin: no need for the cache lock
            yield
            return
        # Under the cache lock, so that an eviction either sees the pin or
        # finished before it (and then ensure() fetches the entry again).
        with self._cache_lock().holding():
            token = self._pins.add([d.hex for d in digests])
        try:
            yield
        finally:
            self._pins.remove(token)

    # -- whole-cache operations -----------------------------------------------------

    def _scan(self) -> list[EntryState]:
        pinned = self._pins.pinned()
        used = self._seals.last_uses()
        states = []
        for path in (self.root / "data").glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                last = used.get(path.name, 0)  # unsealed: evicted first
                states.append(EntryState(path.name, size, last, pinned(path.name)))
        return states

    def recover(self) -> None:
        """Sweep dead inserts, stale reservations and pins; recount the ledger (rule 9)."""
        with self._cache_lock().holding():
            for temp in (self.root / "tmp").iterdir():
                owner = temp.name.split(".", 1)[1].removesuffix(TEMP_MARKER).removesuffix(".ready")
                with contextlib.suppress(FileNotFoundError):
                    if self._is_stale(owner, temp.stat().st_mtime, self.stale_after_s):
                        temp.unlink()
            ledger = read_ledger(self._ledger())
            self._drop_stale_reservations(ledger)
            states = self._scan()
            ledger.used_bytes = sum(state.size_bytes for state in states)
            write_ledger(self._ledger(), ledger)
            self._seals.sweep({state.hex for state in states})
            self._sources.sweep({state.hex for state in states})

    def verify(self) -> list[Digest]:
        """Re-hash every entry and drop the damaged ones; return every digest dropped
        as damaged since the last verify (by it, by recovery or by a lookup)."""
        for path in sorted((self.root / "data").glob("*/*")):
            digest = digest_of_entry(path)
            with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                actual, size = digest_stream(handle)
                if actual != digest:
                    self._drop(path, size)
        return sorted(set(self._take_journal()))

    def evict(self, *, all_unpinned: bool = False, free_bytes: int = 0) -> list[EntryState]:
        """Evict LRU unpinned entries: all of them, or enough to free ``free_bytes``."""
        with self._cache_lock().holding():
            states = self._scan()
            unpinned = [s for s in states if not s.pinned]
            planned = None if all_unpinned else plan_eviction(states, free_bytes)
            victims = unpinned if planned is None else planned
            ledger = read_ledger(self._ledger())
            for victim in victims:
                self._seals.remove(victim.hex)
                with contextlib.suppress(FileNotFoundError):
                    (self.root / "data" / victim.hex[:2] / victim.hex).unlink()
                    ledger.used_bytes -= victim.size_bytes
            write_ledger(self._ledger(), ledger)
        return victims

    def holdings(self) -> tuple[set[Digest], int]:
        """The digests of the entries present and the bytes the ledger counts for them.

        No pins, no lock, no side effects (for a worker's frequent reports to
        its dispatcher): buckets of ``data/`` that did not change since the
        last call are not listed again (:mod:`fsd.holdings`).
        """
        return self._holdings.digests(), read_ledger(self._ledger()).used_bytes

    def entries(self) -> list[EntryState]:
        return sorted(self._scan(), key=lambda s: s.last_used_ns, reverse=True)

    def stats(self) -> CacheStats:
        ledger = read_ledger(self._ledger())
        states = self._scan()
        return CacheStats(
            entries=len(states),
            used_bytes=sum(s.size_bytes for s in states),
            reserved_bytes=ledger.reserved_bytes,
            quota_bytes=self.quota_bytes,
            pinned_entries=sum(s.pinned for s in states),
            fetches=ledger.fetches,
            source_records=len(sources := self._sources.records()),
            source_hits=sum(record.hits for record in sources),
        )

    def source_records(self) -> list[SourceRecord]:
        """What the source index holds: digest, URL and hits of each record."""
        return self._sources.records()


_CACHE_NAMES = (
    "ledger.json",
    "damaged.log",
    "data",
    "tmp",
    "locks",
    "pins",
    SEALS_DIR,
    SOURCES_DIR,
)


def _replace_into(source: Path, final: Path) -> None:
    """Rename ``source`` to ``final``, making its fan-out directory the first time."""
    try:
        os.replace(source, final)
    except FileNotFoundError:
        if not source.exists():
            raise
        final.parent.mkdir(exist_ok=True)
        os.replace(source, final)


def name_for(digest: Digest | None) -> str:
    return digest.hex if digest else "unknown"
