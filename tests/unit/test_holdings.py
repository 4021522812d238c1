"""The cache's holdings index: buckets listed again only when they may have changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fsd.holdings import FULL_EVERY_S, HoldingsIndex
from stager.digest import Digest, digest_bytes


class Clock:
    """The real time, moved on by the test (mtimes are the file system's real ones)."""

    def __init__(self) -> None:
        self.ahead_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead_s


def put(data_dir: Path, content: bytes) -> Digest:
    digest = digest_bytes(content)
    bucket = data_dir / digest.hex[:2]
    bucket.mkdir(parents=True, exist_ok=True)
    (bucket / digest.hex).write_bytes(content)
    return digest


def same_bucket(first: Digest, count: int) -> list[bytes]:
    """Contents whose digests fall in ``first``'s bucket."""
    found, n = [], 0
    while len(found) < count:
        content = f"more {n}".encode()
        if digest_bytes(content).hex[:2] == first.hex[:2]:
            found.append(content)
        n += 1
    return found


def set_mtime(directory: Path, mtime_ns: int) -> None:
    os.utime(directory, ns=(mtime_ns, mtime_ns))


def test_it_lists_entries_and_skips_what_is_not_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, b = put(data, b"a"), put(data, b"b")
    (data / a.hex[:2] / "notes.txt").write_text("not an entry")
    (data / "stray-file").write_text("not a bucket")
    index = HoldingsIndex(data)
    assert index.digests() == {a, b}
    (data / b.hex[:2] / b.hex).unlink()
    assert index.digests() == {a}


def test_a_quiet_bucket_is_not_listed_again_until_the_full_listing(tmp_path: Path) -> None:
    data, clock = tmp_path / "data", Clock()
    first = put(data, b"first")
    bucket = data / first.hex[:2]
    old_ns = time.time_ns() - 100 * 10**9  # quiet for long before the listing
    set_mtime(bucket, old_ns)
    index = HoldingsIndex(data, clock=clock)
    assert index.digests() == {first}
    # A change the directory's mtime does not show (forged back) is not seen...
    (more,) = same_bucket(first, 1)
    hidden = put(data, more)
    set_mtime(bucket, old_ns)
    assert index.digests() == {first}
    # ...until every bucket is listed again, which bounds how stale the answer gets.
    clock.ahead_s = FULL_EVERY_S
    assert index.digests() == {first, hidden}
    # A clock set back does not put the next full listing off.
    latest = put(data, same_bucket(first, 2)[1])
    set_mtime(bucket, old_ns)
    clock.ahead_s = -3600.0
    assert latest not in (first, hidden)
    assert index.digests() == {first, hidden, latest}


def test_a_bucket_changed_near_its_listing_is_listed_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = put(data, b"first")
    bucket = data / first.hex[:2]
    index = HoldingsIndex(data)
    assert index.digests() == {first}
    stamp = bucket.stat().st_mtime_ns  # within the racy window of that listing
    (more,) = same_bucket(first, 1)
    second = put(data, more)
    set_mtime(bucket, stamp)  # as a coarse clock may stamp both changes alike
    assert index.digests() == {first, second}


def test_a_changed_bucket_and_a_new_one_are_seen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = put(data, b"first")
    bucket = data / first.hex[:2]
    set_mtime(bucket, time.time_ns() - 100 * 10**9)
    index = HoldingsIndex(data)
    assert index.digests() == {first}
    (more,) = same_bucket(first, 1)
    second = put(data, more)  # the directory's mtime moves
    other = next(c for c in (b"x", b"y") if digest_bytes(c).hex[:2] != first.hex[:2])
    elsewhere = put(data, other)  # a bucket made since
    assert index.digests() == {first, second, elsewhere}
    for path in bucket.iterdir():
        path.unlink()
    bucket.rmdir()
    assert index.digests() == {elsewhere}
