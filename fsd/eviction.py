"""Which entries to evict: a pure function of what is cached and what is pinned."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class EntryState:
    hex: str
    size_bytes: int
    last_used_ns: int
    pinned: bool


def plan_eviction(entries: Iterable[EntryState], need_bytes: int) -> list[EntryState] | None:
    """The least recently used unpinned entries that free at least ``need_bytes``.

    Returns ``[]`` when nothing needs to go, and ``None`` when even evicting
    every unpinned entry would not free enough (the caller fails fast then).
    """
    if need_bytes <= 0:
        return []
    victims: list[EntryState] = []
    freed = 0
    for entry in sorted(entries, key=lambda e: (e.last_used_ns, e.hex)):
        if entry.pinned:
            continue
        victims.append(entry)
        freed += entry.size_bytes
        if freed >= need_bytes:
            return victims
    return None
