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
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from stager.errors import from_os_error

TEMP_MARKER = ".stager-tmp-"


def temp_path_for(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARKER}{secrets.token_hex(4)}")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(
    final: Path,
    *,
    mode: int = 0o644,
    temp: Path | None = None,
    before_publish: Callable[[Path], None] | None = None,
    durable: bool = True,
    sync_directory: bool | None = None,
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``final`` when the block exits cleanly.

    The caller verifies size and digest inside the block and raises to refuse
    the file. Parent directories are created. ``temp`` (default: a hidden
    name next to ``final``) must be on the same file system as ``final``;
    ``before_publish`` runs on it after fsync and chmod, just before the
    rename. ``durable=False`` skips both fsyncs (for files that can be rebuilt;
    the rename still makes them appear whole); ``sync_directory=False`` skips
    only the directory's (for a staging name that is renamed again later). ``OSError`` becomes a
    :class:`~stager.errors.LocalIOError` (or ``DiskFullError``).
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = temp or temp_path_for(final)
        handle = temp.open("xb")
    except OSError as exc:
        raise from_os_error(exc, f"create {final}") from exc
    try:
        with handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if before_publish is not None:
            before_publish(temp)
        os.replace(temp, final)
        if durable if sync_directory is None else sync_directory:
            fsync_directory(final.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise from_os_error(exc, f"write {final}") from exc
        raise
