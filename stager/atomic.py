"""Publishing a file under its final name only when it is complete.

The sequence (DESIGN.md invariant 1): a temp name in the same directory,
write, flush, fsync, rename over the final name, fsync the directory. Any
exception inside the block removes the temp file, so a failed or refused
transfer leaves nothing behind under either name. A process killed with
``kill -9`` can leave a temp file (``.<name>.stager-tmp-<random>``), never a
partial file under the final name; :data:`TEMP_MARKER` lets sweepers find them.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from stager.errors import from_os_error

TEMP_MARKER = ".stager-tmp-"
WRITE_BEHIND_BYTES = 8 * 1024 * 1024
WRITE_SLICE_BYTES = 128 * 1024

Fsync = Callable[[int], None]  # the seam through which files are made durable (os.fsync)


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` from libc, on Linux."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    start_write = 2  # SYNC_FILE_RANGE_WRITE: start writeback, do not wait for it

    def start_writeback(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, start_write)  # advisory: a failure costs only speed

    return start_writeback


_start_writeback = _load_sync_file_range()


class SlicedFile(io.FileIO):
    """An unbuffered file that hands the kernel at most :data:`WRITE_SLICE_BYTES`
    per ``write()``.

    A write of several MiB lets a kernel with large folios take high-order
    pages for the page cache. Where the hypervisor reclaims free high-order
    blocks (free page reporting), each such page faults back in from the host:
    measured on the bench machine, 1 GiB written as 4 MiB writes took 5-7 s of
    system CPU, as 128 KiB writes 0.3-0.5 s. Elsewhere the slices cost a few
    thousand syscalls per GiB, a few milliseconds.

    With ``write_behind``, it also starts writing its dirty pages to disk every
    :data:`WRITE_BEHIND_BYTES`, so the disk works while the bytes still arrive
    and the fsync before publication finds little left to do (a 1 GiB
    download: about 1.4 s of fsync otherwise, on the bench disk).
    """

    def __init__(self, path: Path, mode: str, *, write_behind: bool) -> None:
        super().__init__(path, mode)
        self._write_behind = write_behind and _start_writeback is not None
        self._flushed_to = 0
        self._written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        count = 0
        while count < len(view):  # a raw write may be short: finish it, as a buffer would
            count += super().write(view[count : count + WRITE_SLICE_BYTES]) or 0
        self._written += count
        if self._write_behind and self._written - self._flushed_to >= WRITE_BEHIND_BYTES:
            assert _start_writeback is not None
            _start_writeback(self.fileno(), self._flushed_to, self._written - self._flushed_to)
            self._flushed_to = self._written
        return count


def temp_path_for(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARKER}{secrets.token_hex(4)}")


def fsync_directory(directory: Path, fsync: Fsync | None = None) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (fsync or os.fsync)(fd)
    finally:
        os.close(fd)


class PendingFile:
    """A binary file written under a temp name that becomes ``final`` only when published.

    As a ``with`` block (see :data:`atomic_file`), it yields the file and publishes
    it when the block exits cleanly; the caller verifies size and digest inside
    the block and raises to refuse the file. Many files written at once (a batch
    of downloads) call :meth:`publish` or :meth:`discard` instead: exactly one
    ends it, and a failed publication discards the temp file itself.

    Parent directories are created. ``temp`` (default: a hidden name next to
    ``final``) must be on the same file system as ``final``; ``before_publish``
    runs on it after fsync and chmod, just before the rename. ``durable=False``
    skips both fsyncs (for files that can be rebuilt; the rename still makes
    them appear whole); ``sync_directory=False`` skips only the directory's (for
    a staging name that is renamed again later). ``replace=False`` publishes with
    ``link()`` instead of a rename: a ``final`` that exists by then is left as
    it is (for a file that processes starting together all create, where a
    rename over an existing name is not atomic on every network file system).
    ``fsync`` does the syncing (default ``os.fsync``; a test counts through it).
    ``OSError`` becomes a :class:`~stager.errors.LocalIOError` (or ``DiskFullError``).
    """

    def __init__(
        self,
        final: Path,
        *,
        mode: int = 0o644,
        temp: Path | None = None,
        before_publish: Callable[[Path], None] | None = None,
        durable: bool = True,
        sync_directory: bool | None = None,
        replace: bool = True,
        fsync: Fsync | None = None,
    ) -> None:
        self.final = final
        self.temp = temp or temp_path_for(final)
        self._mode = mode
        self._before_publish = before_publish
        self._durable = durable
        self._sync_directory = durable if sync_directory is None else sync_directory
        self._replace = replace
        self._fsync = fsync or os.fsync
        try:
            try:
                self.handle: BinaryIO = SlicedFile(self.temp, "xb", write_behind=durable)
            except FileNotFoundError:  # the first file of its directory: make the directory
                final.parent.mkdir(parents=True, exist_ok=True)
                self.handle = SlicedFile(self.temp, "xb", write_behind=durable)
        except OSError as exc:
            raise from_os_error(exc, f"create {final}") from exc

    def publish(self) -> None:
        """Sync (if durable), chmod and rename the file to its final name."""
        temp, final = self.temp, self.final
        try:
            with self.handle:
                self.handle.flush()
                if self._durable:
                    self._fsync(self.handle.fileno())
            os.chmod(temp, self._mode)
            if self._before_publish is not None:
                self._before_publish(temp)
            if self._replace:
                os.replace(temp, final)
            else:
                with contextlib.suppress(FileExistsError):  # created by another process first
                    os.link(temp, final)
                temp.unlink()
            if self._sync_directory:
                fsync_directory(final.parent, self._fsync)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                raise from_os_error(exc, f"write {final}") from exc
            raise

    def discard(self) -> None:
        """Close and remove the temp file; nothing appears under the final name."""
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()

    def __enter__(self) -> BinaryIO:
        return self.handle

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            self.publish()
            return
        self.discard()
        if isinstance(exc, OSError):
            raise from_os_error(exc, f"write {self.final}") from exc


# ``with atomic_file(final, ...) as handle:`` -- the one-file use of PendingFile.
atomic_file = PendingFile
