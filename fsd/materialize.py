"""Putting a cache entry into a task's sandbox: hard link, copy or symlink."""

from __future__ import annotations

import enum
import errno
import os
import shutil
from pathlib import Path

from stager.atomic import atomic_file
from stager.errors import from_os_error


class Materialize(enum.Enum):
    """How an input appears in a sandbox."""

    LINK = "link"
    COPY = "copy"
    SYMLINK = "symlink"


def materialize(entry: Path, dest: Path, mode: Materialize) -> Materialize:
    """Make ``dest`` show ``entry``'s bytes; return the mode actually used.

    ``link`` falls back to ``copy`` across file systems. ``dest`` must not
    exist. A copy is written by temp-and-rename, so it is never partial.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if mode is Materialize.LINK:
            try:
                os.link(entry, dest)
                return Materialize.LINK
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
        if mode is Materialize.SYMLINK:
            os.symlink(entry, dest)
            return Materialize.SYMLINK
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(dest))
        # A sandbox lives and dies with its task: whole or absent, never synced.
        with entry.open("rb") as source, atomic_file(dest, durable=False) as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        return Materialize.COPY
    except OSError as exc:
        raise from_os_error(exc, f"place {dest}") from exc
