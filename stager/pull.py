"""Pull: S3 -> local files, every byte verified before it takes its name.

``s3://b/prefix/`` (or a key that names no object but has objects below it)
pulls the whole prefix into a directory; ``s3://b/key`` pulls one object to
a file, or into a directory that exists or is written with a trailing '/'.

Each object is downloaded through the object store's verified path. A
digest or size mismatch is retried once with fresh metadata (the object may
have been replaced mid-transfer); a second mismatch is an
:class:`~stager.errors.IntegrityError` and leaves nothing at the destination.
Objects written by other tools carry no digest: they are hashed as they
stream and reported as unverified. A destination file whose remembered
digest already matches the object is left alone.

Small files not yet at the destination go in batches: their GETs are all in
flight at once in the native client, started from one thread, with no HEAD.
A file of a batch that fails is left out while the rest are pulled; then the
first error is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stager.atomic import PendingFile
from stager.digest import Digest, Hasher, HashingWriter, once_more_on_mismatch
from stager.digestcache import DigestCache, stamp_of
from stager.errors import IntegrityError, NotFoundError, StagerError, from_os_error
from stager.locations import S3Url
from stager.movers import Read, ReadOutcome
from stager.objectinfo import ObjectInfo, check_received
from stager.objectstore import ObjectStore
from stager.parallel import run_in_batches
from stager.plan import PullItem, plan_pull, single_pull_dest
from stager.progress import Progress


@dataclass(frozen=True)
class PulledFile:
    url: S3Url
    path: Path
    size: int
    digest: Digest
    verified: bool
    downloaded: bool


@dataclass(frozen=True)
class PullReport:
    files: tuple[PulledFile, ...]
    seconds: float

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.size for f in self.files if f.downloaded)

    @property
    def skipped_files(self) -> int:
        return sum(not f.downloaded for f in self.files)

    @property
    def unverified(self) -> tuple[PulledFile, ...]:
        return tuple(f for f in self.files if not f.verified)


def resolve_pull(
    store: ObjectStore, source: S3Url, dest: Path, *, dest_is_dir: bool
) -> list[PullItem]:
    """The files a pull of ``source`` into ``dest`` will write (lists, HEADs; no data)."""
    if not source.is_prefix:
        info = store.head(source)
        if info is not None:
            return [
                PullItem(source, info.size, single_pull_dest(source, dest, dest_is_dir=dest_is_dir))
            ]
    prefix = source.as_prefix()
    items = plan_pull(((i.url, i.size) for i in store.list(prefix)), prefix, dest)
    if not items:
        store.check_bucket(source.bucket)
        raise NotFoundError(f"nothing to pull: no object at or below {source}")
    return items


class _Puller:
    def __init__(
        self, store: ObjectStore, digests: DigestCache, progress: Progress, *, fsync: bool
    ) -> None:
        self.store = store
        self.digests = digests
        self.progress = progress
        self.fsync = fsync

    def pull_one(self, item: PullItem) -> PulledFile:
        return once_more_on_mismatch(lambda: self._pull(item))

    def batchable(self, item: PullItem) -> bool:
        """A small file not there yet: one GET, in a batch (no HEAD, no thread of its own)."""
        return item.size < self.store.settings.multipart_threshold_bytes and not item.dest.exists()

    def pull_batch(self, items: Sequence[PullItem]) -> list[PulledFile | StagerError]:
        """Small new files, their GETs all in flight at once from this thread; each file
        pulled, or why not. A file is published as soon as it checks; a mismatch is
        pulled once more, alone."""
        pending: list[PendingFile] = []
        try:
            for item in items:
                pending.append(PendingFile(item.dest, durable=self.fsync))
            writers = [HashingWriter(p.handle) for p in pending]
            outcomes = self.store.read_many(
                [Read(item.url, writer) for item, writer in zip(items, writers, strict=True)]
            )
        except BaseException:
            for file in pending:
                file.discard()
            raise
        pulled: list[PulledFile | StagerError] = []
        for item, file, writer, outcome in zip(items, pending, writers, outcomes, strict=True):
            try:
                try:
                    pulled.append(self._publish(item, file, writer.hasher, outcome))
                except IntegrityError:  # the object may have changed meanwhile: once more
                    pulled.append(self.pull_one(item))
            except StagerError as exc:
                pulled.append(exc)
        return pulled

    def _publish(
        self, item: PullItem, file: PendingFile, got: Hasher, outcome: ReadOutcome
    ) -> PulledFile:
        try:
            if isinstance(outcome, OSError):
                raise from_os_error(outcome, f"pull {item.url}")
            if isinstance(outcome, StagerError):
                raise outcome
            check_received(outcome, got)
        except BaseException:
            file.discard()
            raise
        file.publish()
        self.progress.advance(outcome.size)
        verified = outcome.digest is not None
        if verified:
            self.digests.put(stamp_of(item.dest.stat()), got.digest)
        return PulledFile(item.url, item.dest, outcome.size, got.digest, verified, True)

    def _pull(self, item: PullItem) -> PulledFile:
        small = item.size < self.store.settings.multipart_threshold_bytes
        info = None
        if not small or item.dest.exists():
            # Needed to skip an up-to-date file, or to plan ranged GETs.
            info = self._head(item.url)
            if info.digest is not None and self._already_there(item.dest, info):
                self.progress.advance(info.size)
                return PulledFile(item.url, item.dest, info.size, info.digest, True, False)
        received = self.store.download_file(
            item.url, item.dest, info=info, on_bytes=self.progress.advance, fsync=self.fsync
        )
        if received.verified:
            self.digests.put(stamp_of(item.dest.stat()), received.digest)
        return PulledFile(
            item.url, item.dest, received.size, received.digest, received.verified, True
        )

    def _head(self, url: S3Url) -> ObjectInfo:
        info = self.store.head(url)
        if info is None:
            raise NotFoundError(f"{url} disappeared during the pull")
        return info

    def _already_there(self, path: Path, info: ObjectInfo) -> bool:
        try:
            stamp = stamp_of(path.stat())
        except OSError:
            return False
        return stamp[2] == info.size and self.digests.get(stamp) == info.digest


def pull(
    source: S3Url,
    dest: Path,
    *,
    store: ObjectStore,
    digests: DigestCache,
    dest_is_dir: bool,
    show_progress: bool = True,
    fsync: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> PullReport:
    """Pull ``source`` to ``dest``; see the module docstring for the rules. ``fsync``:
    sync every file (and its directory) before counting it pulled."""
    started = clock()
    items = resolve_pull(store, source, dest, dest_is_dir=dest_is_dir)
    total = sum(item.size for item in items)
    with Progress(total, "pull", enabled=show_progress) as progress:
        puller = _Puller(store, digests, progress, fsync=fsync)
        files = run_in_batches(
            items,
            puller.batchable,
            puller.pull_batch,
            puller.pull_one,
            workers=store.settings.files_in_flight,
        )
    return PullReport(tuple(files), clock() - started)
