"""Push: frontend files -> S3, deduplicated by digest, with a manifest.

For each file: its digest comes from the digest cache or one streaming read;
if the key already holds an object of that size and digest, nothing is
sent. Otherwise the file is uploaded with the digest in its metadata. S3
fixes metadata when an object is created, so the digest must be known
before the upload starts: a changed file is read twice (hash, then send),
an unchanged one is never re-read. If a file changes between hashing and
the end of its upload the object is deleted and the push fails: the store
never keeps bytes under a digest they do not have.

Finally a manifest of every file (logical path, URL, size, digest) is
written create-only to ``s3://<bucket>/.stager/manifests/``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import fsspec

from stager.atomic import atomic_file
from stager.digest import Digest, HashingWriter, digest_stream
from stager.digestcache import DigestCache, FileStamp, stamp_of
from stager.errors import IntegrityError, LocalIOError, StagerError, from_os_error
from stager.locations import S3Url
from stager.manifest import Manifest, ManifestEntry
from stager.objectinfo import ObjectInfo
from stager.objectstore import ObjectStore
from stager.parallel import run_in_batches
from stager.plan import PushAction, PushItem, Source, plan_push
from stager.progress import Progress
from stager.sources import expand_sources

MANIFEST_PREFIX = ".stager/manifests/"


@dataclass(frozen=True)
class PushReport:
    manifest: Manifest
    manifest_url: S3Url
    uploaded_files: int
    uploaded_bytes: int
    skipped_files: int
    total_bytes: int
    seconds: float


@dataclass(frozen=True)
class _Outcome:
    entry: ManifestEntry
    uploaded: bool


def hash_local_file(path: Path, digests: DigestCache) -> tuple[Digest, int]:
    """(digest, size) of ``path``: remembered, or computed in one read and remembered."""
    try:
        with path.open("rb") as handle:
            stamp = stamp_of(os.fstat(handle.fileno()))
            cached = digests.get(stamp)
            if cached is not None:
                return cached, stamp[2]
            digest, size = digest_stream(handle)
    except OSError as exc:
        raise from_os_error(exc, f"read {path}") from exc
    if size != stamp[2]:
        raise IntegrityError(f"{path} changed size while it was read", hint="push it again")
    digests.put(stamp, digest)
    return digest, size


class _Pusher:
    def __init__(
        self,
        store: ObjectStore,
        digests: DigestCache,
        progress: Progress,
        spool_dir: Path,
        verify_remote: bool,
    ) -> None:
        self.store = store
        self.digests = digests
        self.progress = progress
        self.spool_dir = spool_dir
        self.verify_remote = verify_remote

    def push_one(self, item: PushItem) -> _Outcome:
        path, spooled_digest, cleanup = self._local_copy(item.source)
        try:
            if spooled_digest is None:
                digest, size = hash_local_file(path, self.digests)
            else:
                digest, size = spooled_digest
            entry = ManifestEntry(item.source.logical, str(item.url), size, digest)
            if item.action is PushAction.COMPARE:
                existing = self.store.head(item.url)
                if (
                    existing is not None
                    and (existing.size, existing.digest) == (size, digest)
                    and (not self.verify_remote or self._holds(existing, digest))
                ):
                    self.progress.advance(size)
                    return _Outcome(entry, uploaded=False)
            self._upload(path, item.url, digest, size)
            return _Outcome(entry, uploaded=True)
        finally:
            cleanup()

    def _holds(self, existing: ObjectInfo, digest: Digest) -> bool:
        """True if the stored bytes (read whole, not trusted from metadata) hash to ``digest``."""
        writer = HashingWriter(None)
        self.store.read_into(existing.url, writer, info=existing)
        return writer.hasher.digest == digest and writer.hasher.size == existing.size

    def batchable(self, item: PushItem) -> bool:
        """A small local file the store does not have: one PUT, in a batch (no HEAD)."""
        small = item.source.size < self.store.settings.multipart_threshold_bytes
        return small and item.source.local_path is not None and item.action is PushAction.UPLOAD

    def push_batch(self, items: Sequence[PushItem]) -> list[_Outcome | StagerError]:
        """Small local files, their PUTs all in flight at once from this thread; each
        file pushed, or why not (each fails alone)."""
        outcomes: list[_Outcome | StagerError] = []
        ready: list[tuple[int, Path, Digest, int, FileStamp]] = []
        for item in items:
            path = item.source.local_path
            assert path is not None
            try:
                digest, size = hash_local_file(path, self.digests)
                ready.append((len(outcomes), path, digest, size, _stamp(path)))
                outcomes.append(
                    _Outcome(
                        ManifestEntry(item.source.logical, str(item.url), size, digest),
                        uploaded=True,
                    )
                )
            except StagerError as exc:
                outcomes.append(exc)
        failures = self.store.upload_many(
            [(p, items[n].url, d, size) for n, p, d, size, _ in ready]
        )
        for (n, path, _, size, before), failure in zip(ready, failures, strict=True):
            try:
                if isinstance(failure, OSError):
                    raise from_os_error(failure, f"read {path}")
                if failure is not None:
                    raise failure
                self._check_unchanged(path, items[n].url, before)
                self.progress.advance(size)
            except StagerError as exc:
                outcomes[n] = exc
        return outcomes

    def _upload(self, path: Path, url: S3Url, digest: Digest, size: int) -> None:
        before = _stamp(path)
        try:
            self.store.upload_file(
                path, url, digest=digest, size=size, on_bytes=self.progress.advance
            )
        except OSError as exc:
            raise from_os_error(exc, f"read {path}") from exc
        self._check_unchanged(path, url, before)

    def _check_unchanged(self, path: Path, url: S3Url, before: FileStamp) -> None:
        """Refuse (and delete) an upload whose file changed while it was read."""
        if _stamp(path) != before:
            self.store.delete(url)
            raise IntegrityError(f"{path} changed while it was pushed", hint="push it again")

    def _local_copy(
        self, source: Source
    ) -> tuple[Path, tuple[Digest, int] | None, Callable[[], None]]:
        """A local file with the source's bytes, its (digest, size) if already
        known from spooling, and how to clean it up."""
        if source.local_path is not None:
            return source.local_path, None, lambda: None
        assert source.remote_url is not None
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="spool-")
        spooled = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, fsspec.open(source.remote_url, "rb") as stream:
                writer = HashingWriter(out)
                while chunk := stream.read(1024 * 1024):
                    writer.write(chunk)
        except OSError as exc:
            spooled.unlink(missing_ok=True)
            raise LocalIOError(f"cannot read {source.remote_url}: {exc}") from exc
        known = (writer.hasher.digest, writer.hasher.size)
        return spooled, known, lambda: spooled.unlink(missing_ok=True)


def _stamp(path: Path) -> FileStamp:
    try:
        return stamp_of(path.stat())
    except OSError as exc:
        raise from_os_error(exc, f"read {path}") from exc


def push(
    arguments: Sequence[str],
    dest: S3Url,
    *,
    store: ObjectStore,
    digests: DigestCache,
    show_progress: bool = True,
    verify_remote: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> PushReport:
    """Push every file named by ``arguments`` below the prefix ``dest``.

    With ``verify_remote`` an object whose metadata matches is read back and
    hashed before it counts as unchanged: an object damaged (or replaced by
    another tool) behind metadata that still looks right is uploaded again.
    """
    started = clock()
    dest = dest.as_prefix()
    sources = expand_sources(arguments)
    store.check_bucket(dest.bucket)
    listing = {item.url.key: item.size for item in store.list(dest)}
    items = plan_push(sources, dest, listing)
    total = sum(source.size for source in sources)
    spool = store.settings.state_dir / "spool"
    with Progress(total, "push", enabled=show_progress) as progress:
        pusher = _Pusher(store, digests, progress, spool, verify_remote)
        outcomes = run_in_batches(
            items,
            pusher.batchable,
            pusher.push_batch,
            pusher.push_one,
            workers=store.settings.files_in_flight,
        )
    manifest = Manifest(
        kind="push",
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        entries=tuple(outcome.entry for outcome in outcomes),
    )
    manifest_url = _manifest_url(dest, manifest.created_at)
    store.put_bytes(manifest_url, manifest.to_json(), create_only=True)
    uploaded = [outcome.entry for outcome in outcomes if outcome.uploaded]
    return PushReport(
        manifest=manifest,
        manifest_url=manifest_url,
        uploaded_files=len(uploaded),
        uploaded_bytes=sum(entry.size for entry in uploaded),
        skipped_files=len(outcomes) - len(uploaded),
        total_bytes=total,
        seconds=clock() - started,
    )


def _manifest_url(dest: S3Url, created_at: str) -> S3Url:
    stamp = created_at.replace("-", "").replace(":", "")
    return S3Url(dest.bucket, f"{MANIFEST_PREFIX}push-{stamp}-{secrets.token_hex(4)}.json")


def write_local_manifest(manifest: Manifest, path: Path) -> None:
    """Save ``manifest`` to ``path`` atomically (for ``push --manifest FILE``)."""
    with atomic_file(path) as handle:
        handle.write(manifest.to_json())
