"""Durability by tier: a scratch cache syncs nothing and re-hashes its entries after a
reboot; a shared one (an NFS head) syncs every entry. fsyncs are counted through the
cache's seam, and a reboot is another boot id."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fsd.cache import SMALL_ENTRY_BYTES, NodeCache
from fsd.rootformat import Tier, default_tier
from stager.digest import digest_bytes
from stager.errors import CacheFormatError
from tests.helpers import damage
from tests.unit.test_cache import Source, insert

BOOT_A, BOOT_B = "a" * 32, "b" * 32
LARGE = os.urandom(SMALL_ENTRY_BYTES + 1)  # published after a reservation, not in a batch


class Fsyncs:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fsync(fd)


def fill(cache: NodeCache) -> None:
    insert(cache, b"small")
    insert(cache, LARGE)


def test_a_scratch_cache_syncs_no_entry(tmp_path: Path) -> None:
    fsyncs = Fsyncs()
    cache = NodeCache(
        tmp_path / "c", quota_bytes=1 << 24, tier=Tier.SCRATCH, fsync=fsyncs, boot_id=BOOT_A
    )
    fill(cache)
    assert fsyncs.calls == 0 and not cache.synced
    assert cache.lookup(digest_bytes(LARGE)) is not None


@pytest.mark.parametrize("case", ["shared", "scratch without a boot id"])
def test_a_shared_cache_syncs_every_entry_and_its_directory(tmp_path: Path, case: str) -> None:
    fsyncs = Fsyncs()
    tier, boot = (Tier.SHARED, BOOT_A) if case == "shared" else (Tier.SCRATCH, None)
    cache = NodeCache(tmp_path / "c", quota_bytes=1 << 24, tier=tier, fsync=fsyncs, boot_id=boot)
    fill(cache)
    assert fsyncs.calls == 4 and cache.synced  # per entry: the file, then data/<xx>/


def forge_seal(root: Path, entry: Path, boot: str) -> None:
    """What a crash can leave: the seal names the entry's inode and ctime, and the bytes
    on disk are not those that were hashed (damaging them here moves the ctime, so the
    seal is renamed to the new one)."""
    (seal,) = (root / "seals" / entry.name[:2]).glob(f"{entry.name}.*")
    info = entry.stat()
    seal.rename(seal.with_name(f"{entry.name}.{info.st_ino}.{info.st_ctime_ns}.{boot}"))


def test_after_a_reboot_unsynced_entries_are_rehashed_and_damaged_ones_never_served(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    before = NodeCache(root, quota_bytes=1 << 24, boot_id=BOOT_A)
    assert before.tier is Tier.SCRATCH  # a new root on a local disk
    kept, lost = insert(before, b"kept"), insert(before, LARGE)
    os.chmod(lost, 0o644)
    damage(lost)
    os.chmod(lost, 0o444)
    forge_seal(root, lost, BOOT_A)
    same_boot = NodeCache(root, quota_bytes=1 << 24, boot_id=BOOT_A)
    assert same_boot.lookup(digest_bytes(LARGE)) == lost  # the forged seal holds in its boot

    rebooted = NodeCache(root, quota_bytes=1 << 24, boot_id=BOOT_B)
    assert rebooted.lookup(digest_bytes(LARGE)) is None  # re-hashed: damaged, dropped
    assert not lost.exists()
    assert digest_bytes(LARGE).hex in (root / "damaged.log").read_text()
    assert rebooted.lookup(digest_bytes(b"kept")) == kept  # re-hashed: intact, sealed anew
    assert list((root / "seals" / kept.name[:2]).glob(f"{kept.name}.*.{BOOT_B}"))
    source = Source(LARGE)
    assert rebooted.ensure(digest_bytes(LARGE), len(LARGE), source).read_bytes() == LARGE
    assert source.calls == 1


def test_a_synced_entry_is_trusted_across_reboots(tmp_path: Path) -> None:
    root = tmp_path / "c"
    entry = insert(NodeCache(root, quota_bytes=1 << 24, tier=Tier.SHARED, boot_id=BOOT_A), b"x")
    (seal,) = (root / "seals" / entry.name[:2]).glob(f"{entry.name}.*")
    assert seal.name.count(".") == 2  # no boot id in it
    rebooted = NodeCache(root, quota_bytes=1 << 24, boot_id=BOOT_B)
    assert rebooted.lookup(digest_bytes(b"x")) == entry
    assert seal.exists()  # used, not re-hashed and sealed anew


def test_the_tier_belongs_to_the_root(tmp_path: Path) -> None:
    NodeCache(tmp_path / "c", quota_bytes=1 << 20, tier=Tier.SHARED)
    assert NodeCache(tmp_path / "c", quota_bytes=1 << 20).tier is Tier.SHARED
    with pytest.raises(CacheFormatError, match="is a shared cache, not a scratch one"):
        NodeCache(tmp_path / "c", quota_bytes=1 << 20, tier=Tier.SCRATCH)


def test_a_new_root_on_a_network_file_system_is_shared(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "head:/export /mnt/head\\040one nfs4 rw 0 0\n"
        "weed /mnt/weed fuse.seaweedfs rw 0 0\n"
        "/dev/sdb1 /mnt/usb fuseblk rw 0 0\n"
    )
    assert default_tier(Path("/mnt/head one/stager"), mounts) is Tier.SHARED
    assert default_tier(Path("/mnt/weed/c"), mounts) is Tier.SHARED
    assert default_tier(Path("/mnt/usb/c"), mounts) is Tier.SCRATCH
    assert default_tier(Path("/mnt/head"), mounts) is Tier.SCRATCH  # the root's mount, not this
