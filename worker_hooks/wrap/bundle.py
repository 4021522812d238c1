"""Application bundles: an archive in S3, extracted once per node and shared.

The archive (tar, optionally gzip-, bzip2- or xz-compressed) is fetched
through the node cache, then every member is checked before anything is
written: only regular files and directories, with relative paths that stay
inside the target (no links, devices, FIFOs, absolute paths or ``..``). It
is extracted into a temp directory, made read-only and renamed to
``<bundles>/<digest hex>``: the rename publishes it whole, and when two
processes race, the loser's copy is removed and the winner's is used.
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
from fsd.stagein import StageInput, warm
from stager.atomic import TEMP_MARKER
from stager.errors import ConfigError, UnsafePathError, from_os_error
from stager.locations import safe_relative_path
from stager.objectstore import ObjectStore
from worker_hooks.task.spec import BundleSpec


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
            archive.extractall(target, members=members, filter="data")
    except tarfile.TarError as exc:  # its text lists every method tried, over lines
        raise ConfigError(
            f"bundle {name} is not a readable tar archive",
            hint="bundles are tar files, optionally compressed with gzip, bzip2 or xz",
        ) from exc
    for parent, _, files in os.walk(target):
        for file_name in files:
            path = Path(parent, file_name)
            path.chmod(path.stat().st_mode & 0o555)


def remove_tree(path: Path) -> None:
    """Remove ``path`` even where a task left read-only folders; missing is fine."""

    def make_writable_and_retry(function: Any, failed: str, info: object) -> None:
        with contextlib.suppress(OSError):
            Path(failed).parent.chmod(0o700)
            if Path(failed).is_dir() and not Path(failed).is_symlink():
                Path(failed).chmod(0o700)
            function(failed)

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


def ensure_bundle(
    bundle: BundleSpec, *, bundles_dir: Path, cache: NodeCache, store: ObjectStore
) -> Path:
    """The extracted bundle's directory, extracting it on first use on this node."""
    source = StageInput(bundle.source, "bundle", bundle.digest, bundle.size)
    ((_, entry, _),) = warm([source], cache=cache, store=store)
    final = bundles_dir / entry.name
    if final.is_dir():
        return final
    temp = bundles_dir / f".{entry.name}{TEMP_MARKER}{secrets.token_hex(4)}"
    digest = digest_of_entry(entry)
    try:
        bundles_dir.mkdir(parents=True, exist_ok=True)
        with cache.pinned([digest]):
            if cache.lookup(digest) is None:  # evicted before the pin: fetch it again
                ((_, entry, _),) = warm([source], cache=cache, store=store)
            temp.mkdir()
            _extract(entry, temp, str(bundle.source))
        try:
            temp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    except OSError as exc:
        raise from_os_error(exc, f"extract bundle {bundle.source} into {bundles_dir}") from exc
    finally:
        remove_tree(temp)
    return final
