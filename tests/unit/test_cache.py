"""The node cache on a local directory, with in-process fill functions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fsd import cache as cache_module
from fsd.cache import MARKER_MTIME_NS, NodeCache
from fsd.materialize import Materialize, materialize
from fsd.rootformat import Tier
from fsd.sources import Source as ObjectSource
from stager.digest import HashingWriter, digest_bytes
from stager.errors import CacheFormatError, CacheFullError, IntegrityError
from stager.locations import S3Url
from stager.owner import Owner
from tests.helpers import files_under


class Source:
    """Serves bytes to the cache and counts how often it was asked."""

    def __init__(self, *payloads: bytes) -> None:
        self.payloads = list(payloads)
        self.calls = 0

    def __call__(self, writer: HashingWriter) -> None:
        payload = self.payloads[min(self.calls, len(self.payloads) - 1)]
        self.calls += 1
        writer.write(payload)


def insert(cache: NodeCache, data: bytes) -> Path:
    return cache.ensure(digest_bytes(data), len(data), Source(data))


def test_insert_publishes_a_read_only_verified_entry(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = insert(cache, b"hello")
    assert entry.read_bytes() == b"hello"
    assert entry.stat().st_mode & 0o777 == 0o444
    assert entry.stat().st_mtime_ns == MARKER_MTIME_NS
    assert cache.lookup(digest_bytes(b"hello")) == entry
    assert files_under(tmp_path / "c" / "tmp") == []


def test_present_entries_are_not_fetched_again(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    source = Source(b"data")
    cache.ensure(digest_bytes(b"data"), 4, source)
    cache.ensure(digest_bytes(b"data"), 4, source)
    assert source.calls == 1
    assert cache.stats().fetches == 1


def test_bad_bytes_are_fetched_once_more_then_refused(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    source = Source(b"evil", b"evil")
    with pytest.raises(IntegrityError):
        cache.ensure(digest_bytes(b"good"), 4, source)
    assert source.calls == 2
    assert files_under(tmp_path / "c" / "data") == []
    assert files_under(tmp_path / "c" / "tmp") == []
    assert cache.stats().reserved_bytes == 0


def test_a_second_fetch_can_repair_a_bad_first(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = cache.ensure(digest_bytes(b"good"), 4, Source(b"evil", b"good"))
    assert entry.read_bytes() == b"good"


def test_quota_evicts_least_recently_used_first(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=300)
    a, b, c = (bytes([n]) * 100 for n in (1, 2, 3))
    for data in (a, b, c):
        insert(cache, data)
    assert cache.lookup(digest_bytes(a)) is not None  # a is now more recent than b
    insert(cache, b"\x04" * 100)
    assert cache.lookup(digest_bytes(b)) is None
    assert all(cache.lookup(digest_bytes(d)) for d in (a, c, b"\x04" * 100))
    assert cache.stats().used_bytes == 300


def test_pinned_entries_survive_eviction_pressure(tmp_path: Path) -> None:
    waits: list[float] = []
    cache = NodeCache(tmp_path / "c", quota_bytes=200, reserve_wait_s=0.05, sleep=waits.append)
    a, b = b"a" * 100, b"b" * 100
    insert(cache, a)
    insert(cache, b)
    with cache.pinned([digest_bytes(a), digest_bytes(b)]):
        source = Source(b"c" * 100)
        with pytest.raises(CacheFullError, match="pinned"):
            cache.ensure(digest_bytes(b"c" * 100), 100, source)
        assert source.calls == 0  # failed before any byte moved
        assert waits  # it waited for the pins to go before failing
        assert cache.lookup(digest_bytes(a)) and cache.lookup(digest_bytes(b))
    insert(cache, b"c" * 100)  # unpinned now: room is made
    assert cache.stats().entries == 2


def test_an_input_larger_than_the_quota_fails_before_fetching(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10)
    source = Source(b"x" * 11)
    with pytest.raises(CacheFullError, match="can never fit"):
        cache.ensure(digest_bytes(b"x" * 11), 11, source)
    assert source.calls == 0


_PIN_AND_WAIT = """
import sys, time
from pathlib import Path
from fsd.cache import NodeCache
from stager.digest import Digest
cache = NodeCache(Path(sys.argv[1]), quota_bytes=100)
with cache.pinned([Digest.parse(sys.argv[2])]):
    print("pinned", flush=True)
    time.sleep(600)
"""


def test_a_pin_holds_across_processes_until_its_process_is_killed(tmp_path: Path) -> None:
    """A scratch root's pins are kernel locks: another process's pin holds the entry
    against eviction, and its ``kill -9`` ends the pin."""
    cache = NodeCache(tmp_path / "c", quota_bytes=100, reserve_wait_s=0.2)
    a = b"a" * 100
    insert(cache, a)
    child = subprocess.Popen(
        [sys.executable, "-c", _PIN_AND_WAIT, str(tmp_path / "c"), str(digest_bytes(a))],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "pinned\n"
        assert cache.stats().pinned_entries == 1
        with pytest.raises(CacheFullError, match="pinned"):
            insert(cache, b"b" * 100)
        assert cache.lookup(digest_bytes(a)) is not None
    finally:
        child.kill()
        child.wait()
    insert(cache, b"b" * 100)  # the pin died with its process
    assert cache.lookup(digest_bytes(a)) is None


def test_pins_of_dead_processes_are_released(tmp_path: Path) -> None:
    """A shared root's pins are files: one whose owner is dead no longer counts."""
    cache = NodeCache(tmp_path / "c", quota_bytes=100, tier=Tier.SHARED)
    a = b"a" * 100
    insert(cache, a)
    me = Owner.current()
    dead = Owner(me.host, me.pid, "not-my-start-time", "x")  # same pid, other process
    pin = tmp_path / "c" / "pins" / f"{digest_bytes(a).hex}.{dead}"
    pin.touch()
    insert(cache, b"b" * 100)  # needs a's space: the dead pin must not hold it
    assert cache.lookup(digest_bytes(a)) is None
    assert not pin.exists()


def test_an_entry_written_through_a_link_is_reverified(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = insert(cache, b"original")
    sandbox_file = tmp_path / "sandbox" / "in.txt"
    materialize(entry, sandbox_file, Materialize.LINK)
    os.chmod(sandbox_file, 0o644)
    sandbox_file.write_bytes(b"original")  # same bytes, new mtime: kept
    assert cache.lookup(digest_bytes(b"original")) == entry
    assert entry.stat().st_mtime_ns == MARKER_MTIME_NS
    os.chmod(sandbox_file, 0o644)
    sandbox_file.write_bytes(b"damaged!")  # other bytes: dropped
    assert cache.lookup(digest_bytes(b"original")) is None
    assert not entry.exists()
    assert cache.stats().used_bytes == 0


def test_verify_finds_a_flipped_byte_and_the_next_use_fetches_again(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    data = os.urandom(4096)
    entry = insert(cache, data)
    os.chmod(entry, 0o644)
    with entry.open("r+b") as handle:
        handle.seek(100)
        handle.write(bytes([data[100] ^ 0xFF]))
    os.chmod(entry, 0o444)
    os.utime(entry, ns=(0, MARKER_MTIME_NS))  # a silent corruption: stamps unchanged
    assert cache.verify() == [digest_bytes(data)]
    source = Source(data)
    assert cache.ensure(digest_bytes(data), len(data), source).read_bytes() == data
    assert source.calls == 1


def test_recovery_sweeps_temp_files_of_dead_processes_only(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    me = Owner.current()
    dead = Owner(me.host, me.pid, "not-my-start-time", "x")
    dead_temp = tmp_path / "c" / "tmp" / f"{'ab' * 16}.{dead}.stager-tmp-"
    live_temp = tmp_path / "c" / "tmp" / f"{'cd' * 16}.{me}.stager-tmp-"
    dead_temp.write_bytes(b"partial")
    live_temp.write_bytes(b"in progress")
    NodeCache(tmp_path / "c", quota_bytes=10_000)
    assert not dead_temp.exists()
    assert live_temp.exists()
    assert cache.stats().entries == 0


def test_unknown_digest_is_named_by_what_was_fetched(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = cache.ensure(None, 7, Source(b"foreign"), flight_key="s3://b/k")
    assert entry == cache.entry_path(digest_bytes(b"foreign"))
    assert cache.ensure(None, 7, Source(b"foreign"), flight_key="s3://b/k") == entry


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(CacheFormatError):
        NodeCache(tmp_path / "home", quota_bytes=100)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "VERSION").write_text("stager-cache/0\n")
    with pytest.raises(CacheFormatError, match="another format"):
        NodeCache(tmp_path / "old", quota_bytes=100)


@pytest.mark.parametrize("mode", list(Materialize))
def test_materialize_modes(tmp_path: Path, mode: Materialize) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = insert(cache, b"payload")
    dest = tmp_path / "sandbox" / "sub" / "in.dat"
    assert materialize(entry, dest, mode) == mode
    assert dest.read_bytes() == b"payload"
    assert (dest.stat().st_ino == entry.stat().st_ino) is (mode is not Materialize.COPY)
    assert dest.is_symlink() is (mode is Materialize.SYMLINK)


class _StaleHintCache(NodeCache):
    """A cache whose lock-free room hint is out of date, as when another
    process filled the cache between the hint and the cache lock."""

    def _fits_now(self, size: int) -> bool:
        return True


def test_a_small_insert_that_finds_no_room_waits_like_any_insert(tmp_path: Path) -> None:
    waits: list[float] = []
    cache = _StaleHintCache(
        tmp_path / "c", quota_bytes=200, reserve_wait_s=0.05, sleep=waits.append
    )
    a, b = b"a" * 100, b"b" * 100
    insert(cache, a)
    insert(cache, b)
    with cache.pinned([digest_bytes(a), digest_bytes(b)]):
        with pytest.raises(CacheFullError, match="pinned"):
            cache.ensure(digest_bytes(b"c" * 100), 100, Source(b"c" * 100))
        assert waits
    assert cache.stats().used_bytes == 200  # the quota held
    assert [p for p in files_under(tmp_path / "c" / "tmp")] == []  # the staged bytes are gone
    insert(cache, b"c" * 100)  # unpinned: the small path evicts the LRU entry
    assert cache.stats().used_bytes == 200 and cache.lookup(digest_bytes(a)) is None


def test_holdings_lists_entries_and_their_bytes(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    insert(cache, b"x" * 10)
    insert(cache, b"y" * 32)
    assert cache.holdings() == ({digest_bytes(b"x" * 10), digest_bytes(b"y" * 32)}, 42)
    cache.evict(all_unpinned=True)
    assert cache.holdings() == (set(), 0)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def test_the_injected_clock_orders_uses_and_ages_locks(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    cache = NodeCache(
        tmp_path / "c", quota_bytes=10_000, clock=clock, sleep=clock.sleep, tier=Tier.SHARED
    )
    entry = insert(cache, b"first")
    (state,) = cache.entries()
    assert state.last_used_ns == 1_000_000 * 10**9  # a use is the clock's time
    clock.now += 5
    assert cache.lookup(digest_bytes(b"first")) == entry
    (state,) = cache.entries()
    assert state.last_used_ns == 1_000_005 * 10**9
    # A fetch lock held by a process on another host ages by the cache's clock:
    # once the clock says it is stale, the next fetch breaks it instead of waiting.
    data = b"second"
    lock = tmp_path / "c" / "locks" / f"{digest_bytes(data).hex}.lock"
    lock.write_text("other-host+4242+0+cafe")
    clock.now = lock.stat().st_mtime + cache.stale_after_s + 1
    fetched: list[bytes] = []
    fetch = threading.Thread(target=lambda: fetched.append(insert(cache, data).read_bytes()))
    fetch.daemon = True  # before the fix it waited on the real clock for the lock to age
    fetch.start()
    fetch.join(timeout=20)
    assert fetched == [data]
    assert clock.slept == 0.0  # broken at once, not waited for


def _hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the cache's re-hashes of entries (it reads them through digest_stream)."""
    counted: list[int] = []
    real = cache_module.digest_stream

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "digest_stream", counting)
    return counted


@pytest.mark.parametrize("how", ["flip a byte as root", "chmod, write, chmod back"])
def test_damage_behind_a_forged_mtime_is_not_served(tmp_path: Path, how: str) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = insert(cache, b"original")
    link = tmp_path / "sandbox" / "in.txt"
    materialize(entry, link, Materialize.LINK)  # a hard link to the entry, as a task has
    if how == "chmod, write, chmod back":
        os.chmod(link, 0o644)
    with link.open("r+b") as handle:
        handle.write(b"O")
    os.chmod(link, 0o444)
    os.utime(link, ns=(0, MARKER_MTIME_NS))  # mtime back to the marker: looks untouched
    assert cache.lookup(digest_bytes(b"original")) is None  # ctime gave it away
    assert not entry.exists()


def test_the_caches_own_links_keep_entries_sealed_without_a_rehash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    digest = digest_bytes(b"reference")
    entry = insert(cache, b"reference")
    hashed = _hashes(monkeypatch)
    (seal,) = (tmp_path / "c" / "seals").glob(f"*/{digest.hex}.*")
    seal_inode = seal.stat().st_ino
    for task in range(3):  # what every task does: look up, link, run, release
        assert cache.lookup(digest) == entry
        link = tmp_path / f"sandbox-{task}" / "ref"
        assert cache.materialize(entry, link, Materialize.LINK) is Materialize.LINK
        cache.release_links([(link, digest)])
        assert not link.exists()
    assert cache.lookup(digest) == entry
    # Each new seal is the old one renamed (making a file costs an inode): one seal,
    # of the entry's latest state.
    (seal,) = (tmp_path / "c" / "seals").glob(f"*/{digest.hex}.*")
    assert seal.stat().st_ino == seal_inode
    assert seal.name.split(".")[2] == str(entry.stat().st_ctime_ns)
    assert hashed == []  # no re-hash: every change of the entry's ctime was the cache's own
    # A task that changed its input is caught when its sandbox is released.
    link = tmp_path / "sandbox-bad" / "ref"
    cache.materialize(entry, link, Materialize.LINK)
    os.chmod(link, 0o644)
    link.write_bytes(b"Reference")
    os.chmod(link, 0o444)
    cache.release_links([(link, digest)])
    assert cache.lookup(digest) is None and hashed == [1]


def _source(etag: str = '"e1"', size: int = 6) -> ObjectSource:
    return ObjectSource("http://127.0.0.1:1", S3Url("bkt", "ref/genome.fa"), etag, size)


def test_a_source_without_a_digest_is_found_again_without_a_fetch(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    fill = Source(b"first!", b"second")
    entry = cache.ensure(None, 6, fill, source=_source())
    assert cache.ensure(None, 6, fill, source=_source()) == entry  # found by its source
    assert fill.calls == 1 and entry.read_bytes() == b"first!"
    # A changed object (another ETag, or size) is a new source: fetched, never the old bytes.
    changed = cache.ensure(None, 6, fill, source=_source(etag='"e2"'))
    assert fill.calls == 2 and changed.read_bytes() == b"second"
    stats = cache.stats()
    assert (stats.source_records, stats.source_hits) == (2, 1)


def test_a_source_whose_entry_went_is_fetched_again_and_recovery_sweeps_records(
    tmp_path: Path,
) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    fill = Source(b"first!")
    cache.ensure(None, 6, fill, source=_source())
    cache.evict(all_unpinned=True)
    assert cache.ensure(None, 6, fill, source=_source()).read_bytes() == b"first!"
    assert fill.calls == 2  # the record pointed at nothing: fetched, recorded again
    cache.ensure(None, 6, Source(b"other!"), source=_source(etag='"e3"'))
    cache.evict(all_unpinned=True)
    NodeCache(tmp_path / "c", quota_bytes=10_000)  # recovery, as a new process opens it
    assert cache.stats().source_records == 0


def test_a_format_2_cache_is_migrated_in_place(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = insert(cache, b"kept")
    (tmp_path / "c" / "VERSION").write_text("stager-cache/2\n")
    (tmp_path / "c" / "TIER").unlink()
    shutil.rmtree(tmp_path / "c" / "sources")
    again = NodeCache(tmp_path / "c", quota_bytes=10_000)
    assert (tmp_path / "c" / "VERSION").read_text() == "stager-cache/5\n"
    assert again.tier is Tier.SHARED and again.synced  # older formats synced every entry
    assert again.lookup(digest_bytes(b"kept")) == entry
    assert again.ensure(None, 6, Source(b"first!"), source=_source()).exists()


def test_a_format_4_scratch_cache_keeps_its_tier_and_entries(tmp_path: Path) -> None:
    """Format 5 changed only how a scratch root locks: a format-4 root is migrated in
    place, stays scratch, and its entries, pins and locks work at once."""
    cache = NodeCache(tmp_path / "c", quota_bytes=10_000)
    entry = insert(cache, b"kept")
    (tmp_path / "c" / "VERSION").write_text("stager-cache/4\n")
    (tmp_path / "c" / "locks" / "cache.lock.old-owner").write_text("a candidate left by 4")
    again = NodeCache(tmp_path / "c", quota_bytes=10_000)
    assert (tmp_path / "c" / "VERSION").read_text() == "stager-cache/5\n"
    assert again.tier is Tier.SCRATCH and not again.synced
    with again.pinned([digest_bytes(b"kept")]):
        assert again.stats().pinned_entries == 1
    assert again.lookup(digest_bytes(b"kept")) == entry
    assert insert(again, b"new").read_bytes() == b"new"
