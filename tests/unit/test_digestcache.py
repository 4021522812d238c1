import os
from pathlib import Path

from stager.digest import Digest
from stager.digestcache import RACY_WINDOW_NS, DigestCache, stamp_of

DIGEST = Digest.parse("xxh3-128:" + "ab" * 16)


def test_remembers_by_stamp_and_forgets_on_change(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    with DigestCache(tmp_path / "d.sqlite") as cache:
        stamp = stamp_of(path.stat())
        cache.put(stamp, DIGEST)
        assert cache.get(stamp) == DIGEST
        path.write_bytes(b"two")
        assert cache.get(stamp_of(path.stat())) is None


def test_survives_reopening(tmp_path: Path) -> None:
    stamp = (1, 2, 3, 4_000_000_123, 5)
    with DigestCache(tmp_path / "d.sqlite") as cache:
        cache.put(stamp, DIGEST)
    with DigestCache(tmp_path / "d.sqlite") as cache:
        assert cache.get(stamp) == DIGEST


def test_whole_second_stamps_are_not_remembered_while_racy(tmp_path: Path) -> None:
    whole_second = 1_700_000_000 * 1_000_000_000
    stamp = (1, 2, 3, whole_second, whole_second)
    with DigestCache(None) as cache:
        cache.put(stamp, DIGEST, now_ns=whole_second + RACY_WINDOW_NS // 2)
        assert cache.get(stamp) is None
        cache.put(stamp, DIGEST, now_ns=whole_second + RACY_WINDOW_NS)
        assert cache.get(stamp) == DIGEST


def test_an_unusable_location_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with DigestCache(blocker / "sub" / "d.sqlite") as cache:
        stamp = (1, 2, 3, 4_000_000_001, 5)
        cache.put(stamp, DIGEST)
        assert cache.get(stamp) == DIGEST
    assert os.listdir(tmp_path) == ["file"]
