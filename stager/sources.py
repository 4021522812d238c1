"""Turning push arguments into a list of files.

Plain paths and ``file://`` URLs are read in place. Any other fsspec URL
(``http://``, ``sftp://``, ``memory://``, ...) is listed through fsspec and
its files are spooled to local disk, hashed while they stream, before upload.

Each argument keeps its own base name, as ``cp -r`` does: pushing ``data/``
and ``ref.fa`` to ``s3://b/run/`` gives ``run/data/...`` and ``run/ref.fa``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import fsspec

from stager.errors import LocalIOError, from_os_error
from stager.plan import Source


def is_local(argument: str) -> bool:
    return "://" not in argument or argument.startswith("file://")


def expand_sources(arguments: Sequence[str]) -> list[Source]:
    """Every file named by ``arguments``, recursively for directories."""
    sources: list[Source] = []
    for argument in arguments:
        if is_local(argument):
            sources.extend(_expand_local(Path(argument.removeprefix("file://"))))
        else:
            sources.extend(_expand_remote(argument))
    return sources


def _expand_local(root: Path) -> Iterator[Source]:
    try:
        stat = root.stat()
    except FileNotFoundError as exc:
        raise LocalIOError(f"{root} does not exist") from exc
    except OSError as exc:
        raise from_os_error(exc, f"read {root}") from exc
    base = root.resolve().name
    if not root.is_dir():
        yield Source(logical=base, size=stat.st_size, local_path=root)
        return

    def fail(exc: OSError) -> None:
        raise from_os_error(exc, f"list {exc.filename}") from exc

    for directory, subdirs, files in os.walk(root, onerror=fail):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory, name)
            if path.is_symlink() and not path.exists():
                raise LocalIOError(f"{path} is a broken symbolic link")
            relative = path.relative_to(root).as_posix()
            yield Source(logical=f"{base}/{relative}", size=path.stat().st_size, local_path=path)


def _expand_remote(url: str) -> Iterator[Source]:
    try:
        fs, root = fsspec.core.url_to_fs(url)
        if not fs.isdir(root):
            info = fs.info(root)
            yield Source(logical=PurePosixPath(root).name, size=int(info["size"]), remote_url=url)
            return
        protocol = url.split("://", 1)[0]
        base = PurePosixPath(root.rstrip("/")).name
        for path, info in sorted(fs.find(root, detail=True).items()):
            relative = PurePosixPath(path).relative_to(root.rstrip("/")).as_posix()
            yield Source(
                logical=f"{base}/{relative}",
                size=int(info["size"]),
                remote_url=f"{protocol}://{path}",
            )
    except FileNotFoundError as exc:
        raise LocalIOError(f"{url} does not exist") from exc
    except (OSError, ValueError, ImportError) as exc:
        raise LocalIOError(f"cannot read {url}: {exc}") from exc
