"""Stage-out: make a task's outputs durable in S3, each hashed once as it is read.

Each output is copied into the node cache (hashed as it streams), so a later
task on this node that reads it is a cache hit, and then uploaded from the
verified entry with its digest in the object's metadata (multipart and
parallel above the threshold). An output the cache cannot take (its quota,
or a full disk under it) is hashed and uploaded from the sandbox instead. Any failure becomes
:class:`StageOutError`: the caller then writes no result manifest.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from fsd.cache import NodeCache, digest_of_entry
from stager.digest import Digest, HashingWriter, digest_stream
from stager.errors import DiskFullError, StageOutError, StagerError, from_os_error
from stager.objectstore import ObjectStore
from stager.parallel import run_all
from stager.publish import publish
from worker_hooks.task.result import FileRecord
from worker_hooks.wrap.outputs import FoundOutput


class _Uploader:
    def __init__(
        self, cache: NodeCache | None, store: ObjectStore, task: str, replace_own: bool
    ) -> None:
        self.cache = cache
        self.store = store
        self.task = task
        self.replace_own = replace_own

    def __call__(self, item: FoundOutput) -> FileRecord:
        source, digest = self._hashed(item)
        try:
            published = publish(
                self.store,
                source,
                item.url,
                digest=digest,
                size=item.size,
                task=self.task,
                replace_own=self.replace_own,
            )
        except OSError as exc:
            raise from_os_error(exc, f"read output {item.relative}") from exc
        return FileRecord(item.relative, item.url, published.digest, published.size)

    def _hashed(self, item: FoundOutput) -> tuple[Path, Digest]:
        """A verified file holding the output's bytes, and their digest."""
        if self.cache is not None:
            try:
                entry = self.cache.ensure(
                    None, item.size, lambda writer: _copy(item, writer), flight_key=str(item.path)
                )
                return entry, digest_of_entry(entry)
            except DiskFullError:  # the quota or the disk under the cache: hash it in place
                pass
        try:
            with item.path.open("rb") as handle:
                digest, _ = digest_stream(handle)
        except OSError as exc:
            raise from_os_error(exc, f"read output {item.relative}") from exc
        return item.path, digest


def _copy(item: FoundOutput, writer: HashingWriter) -> None:
    try:
        with item.path.open("rb") as handle:
            shutil.copyfileobj(handle, writer, 1024 * 1024)
    except OSError as exc:
        raise from_os_error(exc, f"read output {item.relative}") from exc


def upload_outputs(
    found: Sequence[FoundOutput],
    *,
    cache: NodeCache | None,
    store: ObjectStore,
    task: str,
    replace_own: bool = False,
    workers: int = 8,
) -> list[FileRecord]:
    """Publish every output (:mod:`stager.publish`); return their records
    in order (an adopted twin's where it got there first), or raise StageOutError."""
    try:
        return run_all(_Uploader(cache, store, task, replace_own), found, workers=workers)
    except StageOutError:
        raise
    except StagerError as exc:
        raise StageOutError(f"stage-out failed: {exc.one_line()}") from exc
