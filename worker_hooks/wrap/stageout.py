"""Stage-out: make a task's outputs durable by their policy, each hashed once as it is read.

Each output is copied into the node cache (hashed as it streams), so a later
task on this node that reads it is a cache hit; a small ``s3`` output that
no task is known to read (``cache_s3=False``, a dispatcher's word) is not: it
is read once into memory and goes to S3 from the bytes hashed. (A large one
still goes through the cache, whose copy is the one read.) Then, by its
``persist``:

- ``s3``: uploaded from the verified entry with its digest in the object's
  metadata (multipart and parallel above the threshold);
- ``mirror``: copied to ``mirrors`` peer nodes, each of which verifies it
  into its cache and queues it in its outbox before it answers; then queued
  in this node's outbox too. Every holder writes it behind to S3;
- ``local``: left in the node cache, for dependants to fetch from here.

An output the cache cannot take (its quota, or a full disk under it) is
hashed and uploaded from the sandbox instead, whatever its policy (from
memory if it is small: the bytes uploaded are the bytes hashed); so is a
``mirror`` output with fewer live peers than it asks for, and any output of
a node without a file service: S3 is durable, so falling back to it never
breaks a promise. Any failure becomes :class:`StageOutError`: the caller
then writes no result manifest.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fsd.cache import NodeCache, digest_of_entry
from fsd.outbox import Outbox
from fsd.peerclient import PeerClient
from stager.digest import Digest, HashingWriter, digest_bytes, digest_stream
from stager.errors import DiskFullError, StageOutError, StagerError, from_os_error
from stager.objectstore import ObjectStore
from stager.parallel import run_all
from stager.publish import compare_generations, publish
from worker_hooks.task.result import FileRecord, Persist
from worker_hooks.wrap.outputs import FoundOutput

IN_MEMORY_BYTES = 1024 * 1024  # an output under this, not cached, is read once into memory


@dataclass(frozen=True)
class _Hashed:
    """An output's bytes, verified: where they are read from to upload, and their digest."""

    source: Path | bytes  # its cache entry, its bytes, or (large, not cached) the output
    digest: Digest
    entry: Path | None  # its cache entry, if it went into the cache


@dataclass(frozen=True)
class NodeKeeping:
    """What keeping outputs on nodes takes: peers to mirror to and this node's outbox.

    The producer writes its ``mirror`` outputs behind ``producer_delay_s``
    after its mirrors may start: by then one of them has usually written
    it, and the producer's write costs one HEAD; if all of them died, the
    producer's copy still gets there.
    """

    client: PeerClient
    mirror_to: tuple[str, ...]  # live peers' file services, best first
    outbox: Outbox
    producer_delay_s: float = 5.0


class _Uploader:
    def __init__(
        self,
        cache: NodeCache | None,
        store: ObjectStore,
        task: str,
        replace_own: bool,
        keeping: NodeKeeping | None = None,
        generation: str | None = None,
        cache_s3: bool = True,
    ) -> None:
        self.cache = cache
        self.cache_s3 = cache_s3
        self.store = store
        self.task = task
        self.replace_own = replace_own
        self.keeping = keeping
        self.generation = generation

    def __call__(self, item: FoundOutput) -> FileRecord:
        hashed = self._hashed(item)
        if item.persist is not Persist.S3 and (kept := self._keep_on_nodes(item, hashed)):
            return kept
        try:
            published = publish(
                self.store,
                hashed.source,
                item.url,
                digest=hashed.digest,
                size=item.size,
                task=self.task,
                replace_own=self.replace_own,
                generation=self.generation,
            )
        except OSError as exc:
            raise from_os_error(exc, f"read output {item.relative}") from exc
        return FileRecord(item.relative, item.url, published.digest, published.size)

    def _keep_on_nodes(self, item: FoundOutput, hashed: _Hashed) -> FileRecord | None:
        """Keep the output by its node policy; None if S3 must take it now instead.

        What S3 already holds at the output's key is looked at first: the same
        bytes, or this task's output from an earlier run (written behind, or
        sent there before a spot interruption, and since made again after the
        dispatcher took it for lost): then that is the output, recorded as in
        S3, and nothing is kept or mirrored (the bytes a result records are
        always the bytes at its key, as with ``s3``).
        """
        entry, digest = hashed.entry, hashed.digest
        if self.keeping is None or entry is None:
            return None  # no file service, or not in the cache (it did not fit)
        there = self.store.head(item.url)
        ours = there is not None and (
            there.digest == digest
            or (
                there.task == self.task
                and not self.replace_own
                and compare_generations(self.generation, there.generation) <= 0
            )
        )
        if there is not None and there.digest is not None and ours:
            return FileRecord(item.relative, item.url, there.digest, there.size)
        record = FileRecord(item.relative, item.url, digest, item.size, item.persist)
        if item.persist is Persist.LOCAL:
            return record
        client, copies = self.keeping.client, 0
        for address in client.usable(self.keeping.mirror_to):
            try:
                client.mirror(
                    address,
                    entry,
                    digest,
                    item.size,
                    write_behind=item.url,
                    task=self.task,
                    generation=self.generation or "",
                )
            except StagerError:
                client.mark_bad(address)
                continue
            copies += 1
            if copies == item.mirrors:
                self.keeping.outbox.add(
                    digest,
                    item.size,
                    item.url,
                    self.task,
                    generation=self.generation,
                    delay_s=self.keeping.producer_delay_s,
                )
                return record
        return None

    def _hashed(self, item: FoundOutput) -> _Hashed:
        """The output's bytes, verified, and their digest: from one read of the output."""
        if self.cache is not None and self._cached(item):
            try:
                entry = self.cache.insert(item.size, lambda writer: _copy(item, writer))
                return _Hashed(entry, digest_of_entry(entry), entry)
            except DiskFullError:  # the quota or the disk under the cache: hash it in place
                pass
        try:
            with item.path.open("rb") as handle:
                if item.size < IN_MEMORY_BYTES:
                    data = handle.read(item.size + 1)
                    if len(data) != item.size:
                        raise StageOutError(
                            f"output {item.relative} changed while it was staged out"
                            f" ({len(data)} bytes, {item.size} when found)"
                        )
                    return _Hashed(data, digest_bytes(data), None)
                digest, _ = digest_stream(handle)
        except OSError as exc:
            raise from_os_error(exc, f"read output {item.relative}") from exc
        return _Hashed(item.path, digest, None)

    def _cached(self, item: FoundOutput) -> bool:
        """Whether the output goes into the node cache: unless it is a small ``s3``
        output that no task is known to read. A large one does all the same, so that
        its bytes are read once, into the entry that is then uploaded."""
        return self.cache_s3 or item.persist is not Persist.S3 or item.size >= IN_MEMORY_BYTES


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
    keeping: NodeKeeping | None = None,
    generation: str | None = None,
    workers: int = 8,
    cache_s3: bool = True,
) -> list[FileRecord]:
    """Keep every output by its policy (S3 ones through :mod:`stager.publish`); return
    their records in order (an adopted twin's where it got there first), or raise
    StageOutError. ``cache_s3=False``: small ``s3`` outputs skip the node cache (no
    task is known to read them)."""
    uploader = _Uploader(cache, store, task, replace_own, keeping, generation, cache_s3)
    try:
        return run_all(uploader, found, workers=workers)
    except StageOutError:
        raise
    except StagerError as exc:
        raise StageOutError(f"stage-out failed: {exc.one_line()}") from exc
