"""Named locks for a cache root, of two kinds, and what they share.

- :class:`LinkLock` is safe on local file systems and on NFS: ``link()``, not
  ``fcntl``. Taking it links a unique candidate file to the lock's name; the
  link count of the candidate (2) is the proof, because on NFS ``link()`` may
  report failure after it succeeded. A lock whose owner is dead (same host)
  or whose file has not been refreshed for ``stale_after_s`` (another host)
  is stale and is broken by renaming it aside first, so two breakers cannot
  both think they removed it. A shared root's locks are these.
- :class:`fsd.rangelocks.RangeLock` is a byte of one file, locked by the
  kernel: for a scratch root, which only one host's processes open.

See docs/cache-format.md, "Locking".
"""

from __future__ import annotations

import abc
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from stager.errors import LockTimeoutError, from_os_error
from stager.owner import Owner


class Lock(Protocol):
    """What the cache asks of a lock."""

    def holding(
        self, timeout_s: float | None = None, *, keep_fresh: bool = False
    ) -> contextlib.AbstractContextManager[object]: ...

    def busy(self) -> bool:
        """Held now, by anyone (a hint: it may change at once)."""
        ...


class _LocalLocks:
    """The in-process locks that threads take before a named lock's file part, so
    only processes poll the file. Kept while someone holds or waits, then dropped
    (a long-lived worker names millions of entries)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    def acquire(self, key: str, timeout_s: float | None) -> bool:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        if lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
            return True
        self._leave(key)
        return False

    def release(self, key: str) -> None:
        self._locks[key][0].release()
        self._leave(key)

    def busy(self, key: str) -> bool:
        with self._guard:
            return key in self._locks

    def _leave(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


_local = _LocalLocks()


class PolledLock(abc.ABC):
    """One named lock: an in-process lock, then the file part, polled with backoff.
    Not reentrant; one holder per instance."""

    def __init__(
        self,
        key: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._key = key  # unique per lock across the process (its path, or its table's)
        self._clock = clock
        self._sleep = sleep
        self._holds_local = False

    @property
    @abc.abstractmethod
    def held(self) -> bool: ...

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Take the file part if it is free; never waits."""

    @abc.abstractmethod
    def _release_file(self) -> None: ...

    @abc.abstractmethod
    def busy(self) -> bool:
        """Held now, by anyone (a hint: it may change at once)."""

    def acquire(self, timeout_s: float | None = None) -> None:
        """Wait for the lock, polling with backoff; raise LockTimeoutError after ``timeout_s``."""
        if not _local.acquire(self._key, timeout_s):
            raise LockTimeoutError(f"timed out waiting for lock {self._key}")
        self._holds_local = True
        deadline = None if timeout_s is None else self._clock() + timeout_s
        delay = 0.001
        try:
            while not self.try_acquire():
                if deadline is not None and self._clock() > deadline:
                    raise LockTimeoutError(f"timed out waiting for lock {self._key}")
                self._sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._holds_local = False
            _local.release(self._key)
            raise

    def release(self) -> None:
        if not self.held:
            return
        self._release_file()
        if self._holds_local:
            self._holds_local = False
            _local.release(self._key)

    def refresh(self) -> None:
        """Show that the holder is still working (a no-op where locks cannot go stale)."""
        return None

    def busy_here(self) -> bool:
        """Held or waited for by a thread of this process."""
        return _local.busy(self._key)

    @contextlib.contextmanager
    def holding(
        self, timeout_s: float | None = None, *, keep_fresh: bool = False
    ) -> Iterator[PolledLock]:
        """Hold the lock for the block. With ``keep_fresh`` the process's
        refresher refreshes it every ``stale_after_s / 4``, for holds that may
        outlast ``stale_after_s`` (a long fetch), so other hosts do not break it."""
        self.acquire(timeout_s)
        if keep_fresh:
            _refresher.add(self)
        try:
            yield self
        finally:
            if keep_fresh:
                _refresher.remove(self)
            self.release()

    @property
    def refresh_every_s(self) -> float | None:
        """How often a long hold must be refreshed (None: never)."""
        return None


class LinkLock(PolledLock):
    """A lock file taken with ``link()`` (see the module's docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        stale_after_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(str(path), clock=clock, sleep=sleep)
        self.path = path
        self.stale_after_s = stale_after_s
        self._owner: Owner | None = None

    @property
    def held(self) -> bool:
        return self._owner is not None

    @property
    def refresh_every_s(self) -> float | None:
        return self.stale_after_s / 4

    def busy(self) -> bool:
        return self.path.exists()

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or stale); never waits."""
        owner = Owner.current()
        candidate = self.path.with_name(f"{self.path.name}.{owner}")
        try:
            with candidate.open("x") as handle:
                handle.write(str(owner))
            try:
                os.link(candidate, self.path)
            except FileExistsError:
                pass
            except OSError as exc:
                raise from_os_error(exc, f"take lock {self.path}") from exc
            if candidate.stat().st_nlink == 2:
                self._owner = owner
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
        if self._is_stale():
            self._break()
            return self.try_acquire()
        return False

    def refresh(self) -> None:
        """Show that the holder is still working (for holders on other hosts)."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def _release_file(self) -> None:
        self._owner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _read_owner(self, path: Path) -> Owner | None:
        try:
            return Owner.parse(path.read_text(errors="replace"))
        except OSError:
            return None

    def _is_stale(self) -> bool:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: the next try may succeed
        owner = self._read_owner(self.path)
        alive = owner.is_alive() if owner is not None else None
        if alive is not None:
            return not alive
        return self._clock() - mtime > self.stale_after_s

    def _break(self) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(4)}")
        stale_owner = self._read_owner(self.path)
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._read_owner(aside) == stale_owner:
            aside.unlink()
        else:  # someone took the lock between our check and our rename: give it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink()


class _Refresher:
    """One daemon thread per process that keeps the locks held with ``keep_fresh``
    fresh (a thread per hold cost more than a small fetch itself)."""

    def __init__(self) -> None:
        self._held: set[PolledLock] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._interval_s: float | None = None  # what the thread waits between rounds

    def add(self, lock: PolledLock) -> None:
        every_s = lock.refresh_every_s
        if every_s is None:
            return
        with self._changed:
            self._held.add(lock)
            if self._thread is None or not self._thread.is_alive():  # none yet, or forked
                self._thread = threading.Thread(
                    target=self._run, name="lock-refresher", daemon=True
                )
                self._thread.start()
            if self._interval_s is None or every_s < self._interval_s:
                self._changed.notify()  # idle, or this lock needs shorter rounds

    def remove(self, lock: PolledLock) -> None:
        with self._changed:
            self._held.discard(lock)

    def _run(self) -> None:
        with self._changed:
            while True:
                if not self._held:
                    self._interval_s = None
                    self._changed.wait()
                    continue
                self._interval_s = min(lock.refresh_every_s or 1.0 for lock in self._held)
                self._changed.wait(self._interval_s)
                for lock in self._held:
                    lock.refresh()


_refresher = _Refresher()
