"""Seals: which cache entries are intact, told by what a writer cannot forge.

A seal is an empty file ``seals/<hex[0:2]>/<hex>.<inode>.<ctime ns>``, made
when the cache has verified an entry's bytes (or written them itself). Any
write to the entry's inode, through any hard link, and any chmod or utime,
changes the inode's ctime, which no one can set back; so an entry whose
current inode and ctime have no seal is re-hashed before it is used. The
cache's own changes to an entry (a hard link into a sandbox, its removal)
are sealed again under the entry's lock, after checking that the state
before them was sealed. A seal's mtime is its entry's last use (LRU).

In a scratch cache (docs/cache-format.md, tiers) entries are not fsynced,
so their seals end in ``.<boot id>``: they vouch for the entry during the
boot that wrote it only. After a reboot the page cache that held the bytes
is gone, what the disk kept may differ, and the entry is re-hashed before
its next use. A seal without a boot id (a synced entry) holds across boots.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

SEALS_DIR = "seals"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str | None:
    """This boot's id (32 hex), or None where the system does not tell (not Linux)."""
    try:
        text = BOOT_ID_FILE.read_text().strip().replace("-", "")
    except OSError:
        return None
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None


class Seals:
    def __init__(
        self, cache_root: Path, clock: Callable[[], float], *, boot_id: str | None = None
    ) -> None:
        """``boot_id``: seal entries as unsynced, for this boot only (None: synced)."""
        self.root = cache_root / SEALS_DIR
        self._clock = clock
        self._boot_id = boot_id

    def _path(self, hexdigest: str, info: os.stat_result, boot_id: str | None) -> Path:
        name = f"{hexdigest}.{info.st_ino}.{info.st_ctime_ns}"
        return self.root / hexdigest[:2] / (f"{name}.{boot_id}" if boot_id else name)

    def _found(self, hexdigest: str, info: os.stat_result) -> Path | None:
        """The seal that vouches for the entry in state ``info`` now, if any."""
        if info.st_mode & 0o222:
            return None
        for boot_id in (self._boot_id, None) if self._boot_id else (None,):
            path = self._path(hexdigest, info, boot_id)
            if path.exists():
                return path
        return None

    def holds(self, hexdigest: str, info: os.stat_result) -> bool:
        """True if the entry in state ``info`` (its ``stat``) is sealed and read-only."""
        return self._found(hexdigest, info) is not None

    def use(self, hexdigest: str, info: os.stat_result) -> bool:
        """Record a use of the entry in state ``info``; False if that state is not sealed."""
        path = self._found(hexdigest, info)
        if path is None:
            return False
        now_ns = int(self._clock() * 1e9)
        try:
            os.utime(path, ns=(now_ns, now_ns))
        except FileNotFoundError:
            return False
        return True

    def seal(self, hexdigest: str, entry: Path) -> None:
        """Seal the entry's current state, as a use now; its older seals go."""
        path = self._path(hexdigest, entry.stat(), self._boot_id)
        prefix = f"{hexdigest}."
        try:
            # no glob: it compiles a pattern per call
            older = [name for name in os.listdir(path.parent) if name.startswith(prefix)]
        except FileNotFoundError:  # the first seal of its bucket
            path.parent.mkdir(parents=True, exist_ok=True)
            older = []
        # An older seal is renamed to the new name rather than a new file made: making
        # files is what costs most in a cache that churns (each one a new inode).
        reused = False
        for name in older:
            if name == path.name:
                reused = True
            elif not reused:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path.parent / name, path)
                    reused = True
            else:
                (path.parent / name).unlink(missing_ok=True)
        if not reused:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o444))
        now_ns = int(self._clock() * 1e9)
        os.utime(path, ns=(now_ns, now_ns))

    def remove(self, hexdigest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for old in (self.root / hexdigest[:2]).glob(f"{hexdigest}.*"):
                old.unlink(missing_ok=True)

    def last_uses(self) -> dict[str, int]:
        """The last use (ns) of every sealed entry, by hex digest."""
        uses: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError):
            for bucket in self.root.iterdir():
                for seal in bucket.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        uses[seal.name.split(".", 1)[0]] = seal.stat().st_mtime_ns
        return uses

    def sweep(self, present: set[str]) -> None:
        """Remove the seals of entries that are gone (evicted by an older stager, say)."""
        with contextlib.suppress(FileNotFoundError):
            for bucket in self.root.iterdir():
                for seal in bucket.iterdir():
                    if seal.name.split(".", 1)[0] not in present:
                        seal.unlink(missing_ok=True)
