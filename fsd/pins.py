"""Pins: which cache entries running tasks use, so that no eviction takes them (rule 3).

Two kinds, by the root's tier (docs/cache-format.md):

- :class:`FilePins` (a shared root): one empty file ``pins/<hex>.<owner>``
  per pin; a pin whose owner is dead, or (another host's) not touched for
  ``pin_stale_after_s``, no longer counts and is removed by the next scan.
- :class:`RangePins` (a scratch root): a shared kernel lock on a byte of
  ``locks/pins`` (:mod:`fsd.rangelocks`), which makes no file and ends with
  its process.

Either is taken under the cache lock, so an eviction sees the pin or
finished before it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from fsd.rangelocks import LockTable, offset_of
from stager.owner import Owner


class Pins(Protocol):
    def add(self, hexdigests: Sequence[str]) -> tuple[str, ...]:
        """Pin the entries; return what :meth:`remove` takes to unpin them."""
        ...

    def remove(self, token: tuple[str, ...]) -> None: ...

    def pinned(self) -> Callable[[str], bool]:
        """A test of whether an entry is pinned now, by any process (for one scan)."""
        ...


class FilePins:
    """One file per pin (see the module's docstring)."""

    def __init__(self, folder: Path, is_stale: Callable[[str, float], bool]) -> None:
        """``is_stale(owner, mtime)``: whether a pin of ``owner`` no longer counts."""
        self.folder = folder
        self._is_stale = is_stale

    def add(self, hexdigests: Sequence[str]) -> tuple[str, ...]:
        # One flat directory of pin files: no per-digest directory that a
        # concurrent unpinner could remove between our mkdir and our create.
        owner = Owner.current()
        names = tuple(f"{hexdigest}.{owner}" for hexdigest in hexdigests)
        for name in names:
            (self.folder / name).touch()
        return names

    def remove(self, token: tuple[str, ...]) -> None:
        for name in token:
            (self.folder / name).unlink(missing_ok=True)

    def pinned(self) -> Callable[[str], bool]:
        live: set[str] = set()
        for pin in self.folder.iterdir():
            hexdigest, _, owner = pin.name.partition(".")
            if hexdigest in live:
                continue
            with contextlib.suppress(FileNotFoundError):  # unpinned meanwhile
                if not self._is_stale(owner, pin.stat().st_mtime):
                    live.add(hexdigest)
                else:
                    pin.unlink()
        return live.__contains__


class RangePins:
    """Pins as shared locks on bytes of a table, counted in this process."""

    def __init__(self, table: LockTable) -> None:
        self._table = table
        self._counts: dict[str, int] = {}
        self._guard = threading.Lock()

    def add(self, hexdigests: Sequence[str]) -> tuple[str, ...]:
        added: list[str] = []
        with self._guard:
            try:
                for hexdigest in hexdigests:
                    count = self._counts.get(hexdigest, 0)
                    if count == 0:
                        self._table.share(offset_of(hexdigest))
                    self._counts[hexdigest] = count + 1
                    added.append(hexdigest)
            except BaseException:  # all of them or none
                self._remove(added)
                raise
        return tuple(hexdigests)

    def remove(self, token: tuple[str, ...]) -> None:
        with self._guard:
            self._remove(token)

    def _remove(self, hexdigests: Sequence[str]) -> None:
        for hexdigest in hexdigests:
            count = self._counts[hexdigest]
            if count == 1:
                del self._counts[hexdigest]
                self._table.unlock(offset_of(hexdigest))
            else:
                self._counts[hexdigest] = count - 1

    def pinned(self) -> Callable[[str], bool]:
        """A test of whether an entry is pinned, by this process or another."""
        with self._guard:
            mine = set(self._counts)
        return lambda hexdigest: (
            hexdigest in mine or self._table.locked_elsewhere(offset_of(hexdigest))
        )
