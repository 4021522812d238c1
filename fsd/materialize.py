"""Putting a cache entry into a task's sandbox: hard link, copy or symlink."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from stager.atomic import atomic_file
from stager.errors import from_os_error


def materialize(entry: Path, dest: Path, mode: str) -> str:
    """Make ``dest`` show ``entry``'s bytes; return the mode actually used.

    ``link`` falls back to ``copy`` across file systems. ``dest`` must not
    exist. A copy is written by temp-and-rename, so it is never partial.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if mode == "link":
            try:
                os.link(entry, dest)
                return "link"
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
            mode = "copy"
        if mode == "symlink":
            os.symlink(entry, dest)
            return "symlink"
        if mode != "copy":
            raise ValueError(f"unknown materialization mode {mode!r}")
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(dest))
        with entry.open("rb") as source, atomic_file(dest) as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        return "copy"
    except OSError as exc:
        raise from_os_error(exc, f"place {dest}") from exc
