"""Locks and pins of a scratch root: bytes of one file, locked by the kernel.

A scratch root is one node's own, opened only by that node's processes, so
the kernel can keep its locks: each named lock is one byte of
``locks/table``, at an offset hashed from its name, locked with an open
file description lock (``F_OFD_SETLK``), and each pin a shared lock on a
byte of ``locks/pins``. Taking one makes no file: making files (a new
inode each) was most of what a worker spent on a busy cache. The kernel
drops a process's locks when it dies, so none is ever stale.

Open file description locks belong to an open file, not to a process or a
thread. Each process has each table open once while it holds anything in
it (again after a fork); its threads take a named lock in the process
first (:class:`fsd.locks.PolledLock`), so at most one of them holds a byte
of ``table``. Pins are counted in the process, and the byte of ``pins`` is
locked while the count is above zero.

Linux only (3.15 and later); where the kernel or the file system lacks
these locks, a scratch root's locks are link locks, like a shared root's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

from fsd.locks import PolledLock
from stager.errors import StagerError, from_os_error

AVAILABLE = hasattr(fcntl, "F_OFD_SETLK")
_FLOCK = "hhqqi4x"  # struct flock: type, whence, start, length, pid (0 for these locks)
_BUSY = (errno.EAGAIN, errno.EACCES)
_UNSUPPORTED = (errno.EINVAL, errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP)


def usable(path: Path) -> bool:
    """Whether the file system under ``path`` (a table, made if missing) keeps these
    locks: some FUSE and network file systems refuse them (EINVAL, ENOLCK, ENOTSUP).
    Every process on one host finds the same, so they agree on the kind of lock."""
    if not AVAILABLE:
        return False
    table = LockTable(path)
    try:
        table.locked_elsewhere(0)
    except StagerError as exc:
        if isinstance(exc.__cause__, OSError) and exc.__cause__.errno in _UNSUPPORTED:
            return False
        raise
    return True


def offset_of(name: str) -> int:
    """The byte that stands for ``name``: 62 bits of its hash (a collision is as likely
    as two digests' first 8 bytes agreeing)."""
    return xxhash.xxh3_64_intdigest(name.encode()) >> 2


class LockTable:
    """One file whose bytes stand for names.

    Open while this process holds a lock or a pin in it, closed when it holds
    none (so a cache dropped leaves no open file behind, and a small disk can
    be unmounted); opened anew in a forked child, whose locks are its own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._users = 0  # locks and pins held, and look-ups under way
        self._pid = os.getpid()
        self._guard = threading.Lock()

    def _enter(self) -> int:
        with self._guard:
            if self._pid != os.getpid():  # a forked child: the parent's file is not ours
                if self._fd >= 0:
                    os.close(self._fd)
                self._fd, self._users, self._pid = -1, 0, os.getpid()
            if self._users == 0:
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except OSError as exc:
                    raise from_os_error(exc, f"open lock table {self.path}") from exc
            self._users += 1
            return self._fd

    def _leave(self) -> None:
        with self._guard:
            self._users -= 1
            if self._users == 0:
                os.close(self._fd)
                self._fd = -1

    @staticmethod
    def _call(fd: int, command: int, kind: int, offset: int) -> bytes:
        request = struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)
        return fcntl.fcntl(fd, command, request)

    def lock(self, offset: int) -> bool:
        """Lock the byte at ``offset`` if no other open file holds it; never waits."""
        return self._set(fcntl.F_WRLCK, offset)

    def share(self, offset: int) -> None:
        """Take a shared lock on the byte at ``offset`` (no one takes these bytes whole)."""
        if not self._set(fcntl.F_RDLCK, offset):
            raise StagerError(f"cannot pin in {self.path}: another program holds it locked")

    def _set(self, kind: int, offset: int) -> bool:
        fd = self._enter()
        try:
            self._call(fd, fcntl.F_OFD_SETLK, kind, offset)
        except OSError as exc:
            self._leave()
            if exc.errno in _BUSY:
                return False
            raise from_os_error(exc, f"lock {self.path}") from exc
        return True

    def unlock(self, offset: int) -> None:
        """Release a byte :meth:`lock` or :meth:`share` took."""
        try:
            self._call(self._fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK, offset)
        finally:
            self._leave()

    def locked_elsewhere(self, offset: int) -> bool:
        """True if another open file (another process) holds any lock on the byte."""
        fd = self._enter()
        try:
            answer = self._call(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, offset)
        except OSError as exc:
            raise from_os_error(exc, f"look at {self.path}") from exc
        finally:
            self._leave()
        kind: int = struct.unpack(_FLOCK, answer)[0]
        return kind != fcntl.F_UNLCK


class RangeLock(PolledLock):
    """A named lock: one byte of a :class:`LockTable`."""

    def __init__(
        self,
        table: LockTable,
        name: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(f"{table.path}#{name}", clock=clock, sleep=sleep)
        self._table = table
        self._offset = offset_of(name)
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def busy(self) -> bool:
        return self.busy_here() or self._table.locked_elsewhere(self._offset)

    def try_acquire(self) -> bool:
        self._held = self._table.lock(self._offset)
        return self._held

    def _release_file(self) -> None:
        self._held = False
        self._table.unlock(self._offset)
