"""Application bundles: an archive in S3, extracted once per node and shared.

The archive (tar, optionally gzip-, bzip2- or xz-compressed) is fetched
through the node cache, then every member is checked before anything is
written: only regular files and directories, with relative paths that stay
inside the target (no links, devices, FIFOs, absolute paths or ``..``). It
is extracted into a temp directory, made read-only (files and folders),
renamed to ``<bundles>/<digest hex>`` and sealed.

Every task of the node sees that one tree, and a task runs as the worker's
user, who owns it: read-only folders stop a slip, not a task that means it
(it may make them writable again, and root ignores them). So every use
first checks the tree against its seal (``<hex>.seal``: a digest over each
member's path, mode, size, inode and ctime, which no write, chmod,
replacement or rename inside the tree leaves unchanged, and which a task
cannot set back). A tree that fails the check, or has no seal (a crash
mid-publication), is removed and extracted again from the verified cache
entry. One lock per bundle (``<hex>.lock``) orders checks, extractions and
seals among processes. A change made while another task is using the tree
is not prevented for that task; the next use repairs it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tarfile
from pathlib import Path
from typing import Any

from fsd.cache import NodeCache, digest_of_entry
from fsd.locks import LinkLock
from fsd.stagein import StageInput, warm
from stager.atomic import TEMP_MARKER, atomic_file
from stager.digest import Hasher
from stager.errors import ConfigError, UnsafePathError, from_os_error
from stager.locations import safe_relative_path
from stager.objectstore import ObjectStore
from worker_hooks.task.spec import BundleSpec

READ_ONLY_DIR = 0o555
# Python before 3.11.4 has no extraction filters; the members are checked above
# either way, and modes are reduced to r-x after extraction.
_DATA_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def check_members(archive: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    """Every member, if all are plain files or directories inside the target."""
    members = archive.getmembers()
    for member in members:
        safe_relative_path(member.name, what=f"bundle {name}: member")
        if not (member.isfile() or member.isdir()):
            raise UnsafePathError(
                f"bundle {name}: member {member.name!r} is a link or a special file",
                hint="bundles hold only files and folders",
            )
    return members


def _extract(archive_path: Path, target: Path, name: str) -> None:
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = check_members(archive, name)
            archive.extractall(target, members=members, **_DATA_FILTER)
    except tarfile.TarError as exc:  # its text lists every method tried, over lines
        raise ConfigError(
            f"bundle {name} is not a readable tar archive",
            hint="bundles are tar files, optionally compressed with gzip, bzip2 or xz",
        ) from exc
    for parent, dirs, files in os.walk(target, topdown=False):
        for file_name in files:
            path = Path(parent, file_name)
            path.chmod(path.stat().st_mode & 0o555)
        for dir_name in dirs:
            Path(parent, dir_name).chmod(READ_ONLY_DIR)
    target.chmod(READ_ONLY_DIR)


def fingerprint(root: Path) -> str:
    """A digest of the tree's shape: every member's path, mode, size, inode and ctime."""
    hasher = Hasher()
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for path in [Path(parent), *(Path(parent, name) for name in sorted(files))]:
            info = path.lstat()
            member = path.relative_to(root).as_posix()
            line = f"{member}\0{info.st_mode}\0{info.st_size}\0{info.st_ino}\0{info.st_ctime_ns}\n"
            hasher.update(line.encode(errors="surrogateescape"))
    return str(hasher.digest)


def remove_tree(path: Path) -> None:
    """Remove ``path`` (a folder, even where a task left read-only folders in it, or a
    file); missing is fine."""

    def make_writable_and_retry(function: Any, failed: str, info: object) -> None:
        with contextlib.suppress(OSError):
            Path(failed).parent.chmod(0o700)
            if Path(failed).is_dir() and not Path(failed).is_symlink():
                Path(failed).chmod(0o700)
            function(failed)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


def _intact(tree: Path, seal: Path) -> bool:
    try:
        return tree.is_dir() and seal.read_text() == fingerprint(tree)
    except OSError:
        return False


def ensure_bundle(
    bundle: BundleSpec, *, bundles_dir: Path, cache: NodeCache, store: ObjectStore
) -> Path:
    """The extracted bundle's directory, as published: extracted on first use on this
    node, and again whenever it no longer matches its seal."""
    source = StageInput(bundle.source, "bundle", bundle.digest, bundle.size)
    ((_, entry, _),) = warm([source], cache=cache, store=store)
    final = bundles_dir / entry.name
    seal = bundles_dir / f"{entry.name}.seal"
    try:
        bundles_dir.mkdir(parents=True, exist_ok=True)
        with LinkLock(bundles_dir / f"{entry.name}.lock").holding():
            if _intact(final, seal):
                return final
            seal.unlink(missing_ok=True)
            remove_tree(final)  # changed since it was sealed, or never sealed
            _publish(source, entry, final, cache=cache, store=store)
            with atomic_file(seal) as handle:
                handle.write(fingerprint(final).encode())
    except OSError as exc:
        raise from_os_error(exc, f"extract bundle {bundle.source} into {bundles_dir}") from exc
    return final


def _publish(
    source: StageInput, entry: Path, final: Path, *, cache: NodeCache, store: ObjectStore
) -> None:
    """Extract the archive ``entry`` into a temp directory, then rename it to ``final``."""
    temp = final.with_name(f".{final.name}{TEMP_MARKER}{secrets.token_hex(4)}")
    digest = digest_of_entry(entry)
    try:
        with cache.pinned([digest]):
            if cache.lookup(digest) is None:  # evicted before the pin: fetch it again
                ((_, entry, _),) = warm([source], cache=cache, store=store)
            temp.mkdir()
            _extract(entry, temp, str(source.source))
        temp.rename(final)
    finally:
        remove_tree(temp)
