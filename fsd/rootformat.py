"""A cache root's format and tier: ``VERSION`` and ``TIER``, made, migrated and checked.

The tier is a property of the root, not of whoever opens it (docs/cache-format.md):

- ``scratch``: a node's own cache on ephemeral disk. Entries are not
  fsynced; their seals name the boot that wrote them, and after a reboot
  they are re-hashed before their next use.
- ``shared``: an NFS head, read by other nodes. Every entry is fsynced (the
  file, then its directory) before it is published.

A new root is made as its maker asks, or else ``shared`` on a network file
system (NFS, SMB, FUSE and the like, so every node that points its cache at
one mount agrees) and ``scratch`` elsewhere. Roots of formats 2 and 3 were
synced throughout and are migrated as ``shared``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from pathlib import Path

from stager.atomic import TEMP_MARKER, atomic_file
from stager.errors import CacheFormatError, from_os_error

FORMAT = "stager-cache/5\n"
MIGRATES_FROM = ("stager-cache/2\n", "stager-cache/3\n")  # synced throughout: shared
KEEPS_TIER_FROM = ("stager-cache/4\n",)  # a scratch root of 4 took link locks
VERSION_FILE = "VERSION"
TIER_FILE = "TIER"
MOUNTS_FILE = Path("/proc/self/mounts")
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "lustre", "gpfs", "beegfs"}
)


class Tier(enum.Enum):
    SCRATCH = "scratch"
    SHARED = "shared"


def open_root(root: Path, wanted: Tier | None, *, own_names: Iterable[str]) -> Tier:
    """Initialize ``root`` (as ``wanted``, default scratch) or migrate it; return its tier.

    A root of another format, a non-empty directory that is not a cache
    (``own_names``: what a cache puts in its root), or a root of another tier
    than ``wanted`` is refused with :class:`CacheFormatError`. Every step is
    idempotent, and files are published with ``link()``, so processes that
    open one root together agree.
    """
    version, tier_file = root / VERSION_FILE, root / TIER_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not version.exists():
            names = {*own_names, VERSION_FILE, TIER_FILE}
            if any(
                p.name.lstrip(".").split(TEMP_MARKER, 1)[0] not in names for p in root.iterdir()
            ):
                raise CacheFormatError(f"{root} is not empty and is not a stager cache")
            _write_once(tier_file, (wanted or default_tier(root)).value)
            _write_once(version, FORMAT)
        found = version.read_text()
        if found in MIGRATES_FROM or found in KEEPS_TIER_FROM:
            if found in MIGRATES_FROM:
                (root / "sources").mkdir(exist_ok=True)  # format 3 added the source index
                _write_once(tier_file, Tier.SHARED.value)  # older formats synced every entry
            with atomic_file(version) as handle:  # the same bytes, whoever writes them
                handle.write(FORMAT.encode())
        elif found != FORMAT:
            raise CacheFormatError(
                f"{root} holds a cache of another format: {found.strip()!r}"
                " (a cache holds only copies: empty it, or use another --cache-dir)"
            )
        tier = Tier(tier_file.read_text().strip())
    except OSError as exc:
        raise from_os_error(exc, f"open cache {root}") from exc
    except ValueError as exc:
        raise CacheFormatError(f"{root}/{TIER_FILE} names no tier (scratch or shared)") from exc
    if wanted is not None and tier is not wanted:
        raise CacheFormatError(
            f"{root} is a {tier.value} cache, not a {wanted.value} one "
            "(a cache holds only copies: empty it, or use another --cache-dir)"
        )
    return tier


def default_tier(root: Path, mounts: Path = MOUNTS_FILE) -> Tier:
    """``shared`` if ``root`` is on a network file system (by its mount), else ``scratch``."""
    path = root.resolve()
    best, kind = "", ""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return Tier.SCRATCH
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])  # "\\040": " "
        if (path.as_posix() + "/").startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fields[2]
    network = kind in NETWORK_FILE_SYSTEMS or (kind.startswith("fuse.") and kind != "fuseblk")
    return Tier.SHARED if network else Tier.SCRATCH


def _write_once(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, unless it exists (then it is left as it is)."""
    with atomic_file(path, replace=False) as handle:
        handle.write(f"{text.strip()}\n".encode())
