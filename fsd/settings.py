"""Settings of the node cache: ``[cache]`` in stager.toml, ``STAGER_CACHE_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsd.rootformat import Tier
from stager.errors import ConfigError
from stager.settings import (
    member_of,
    optional_str,
    positive_float,
    setting_field,
    size_value,
)

GB = 1000**3


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stager" / "node-cache"


def _optional_size(value: Any) -> int | None:
    return None if optional_str(value) is None else size_value(value)


def _optional_tier(value: Any) -> Tier | None:
    return None if optional_str(value) is None else member_of(Tier)(value)


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    cache_dir: Path = setting_field(_default_cache_dir, Path, "the cache's root directory")
    cache_quota: int | None = setting_field(
        None, _optional_size, "bytes the cache may hold [min(140G, 90% of its file system)]"
    )
    cache_stale_after_s: float = setting_field(
        600.0, positive_float, "locks and reservations of other hosts expire after this"
    )
    cache_reserve_wait_s: float = setting_field(
        120.0, positive_float, "wait this long for pinned space before failing a fetch"
    )
    cache_pin_stale_after_s: float = setting_field(
        86400.0, positive_float, "pins of other hosts expire after this"
    )
    cache_tier: Tier | None = setting_field(
        None,
        _optional_tier,
        "scratch (a node's own disk: no fsync per entry) or shared (an NFS head: synced); "
        "a new cache is made so, an existing one must be so [the cache's own; new: scratch]",
    )

    def __post_init__(self) -> None:
        if self.cache_quota is not None and self.cache_quota <= 0:
            raise ConfigError("cache_quota must be above 0")


def default_quota_bytes(root: Path) -> int:
    """The smaller of 140 GB and 90 % of the file system that holds ``root``."""
    stat = os.statvfs(root)
    return min(140 * GB, int(stat.f_blocks * stat.f_frsize * 0.9))
