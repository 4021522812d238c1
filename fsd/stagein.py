"""Stage-in: put a task's inputs into its sandbox through the node cache.

Order of work, so that a bad spec costs no I/O: every input's sandbox path
and URL are validated first; then inputs without a known digest or size are
resolved with one HEAD each; then a pure plan picks each input's source
tier (local cache, then the NFS head, then a peer node that holds it, then
S3); a peer that fails (:mod:`fsd.peerclient` bounds how long that takes)
is passed over for the next, and S3 is always the last; then missing entries are
fetched in parallel (single flight per digest across processes) and every
input is materialized. Entries stay pinned for as long as the caller's
``with`` block runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fsd.batchinsert import ensure_many
from fsd.cache import SMALL_ENTRY_BYTES, Fill, NodeCache, Wanted, digest_of_entry
from fsd.materialize import Materialize
from fsd.peerclient import PeerClient, first_that_works
from fsd.sources import Source
from stager.digest import Digest, HashingWriter
from stager.errors import (
    ConfigError,
    NotFoundError,
    StagerError,
    UnreachableError,
    from_os_error,
)
from stager.locations import S3Url, safe_relative_path
from stager.movers import Read, ReadOutcome
from stager.objectinfo import ObjectInfo, check_received
from stager.objectstore import ObjectStore
from stager.parallel import run_all


@dataclass(frozen=True)
class StageInput:
    """One input: where it is, where it goes in the sandbox, what is known of it."""

    source: S3Url
    path: str
    digest: Digest | None = None
    size: int | None = None
    etag: str | None = None  # as a listing gave it, with the size: finds it in the source index


class Tier(enum.Enum):
    LOCAL = "local"
    NFS_HEAD = "nfs-head"
    PEER = "peer"
    S3 = "s3"


@dataclass(frozen=True)
class Peers:
    """Other nodes that hold some inputs (the dispatcher's replica catalog says which)."""

    client: PeerClient
    holders: Mapping[Digest, Sequence[str]]  # digest -> addresses of node file services


@dataclass(frozen=True)
class ResolvedInput:
    url: S3Url
    dest: PurePosixPath
    digest: Digest | None
    size: int
    info: ObjectInfo | None = None


@dataclass(frozen=True)
class PlannedInput:
    input: ResolvedInput
    tier: Tier


@dataclass(frozen=True)
class StagedInput:
    path: Path
    digest: Digest
    size: int
    tier: Tier
    verified: bool
    materialized_as: Materialize


def validate_inputs(inputs: Sequence[StageInput]) -> list[tuple[StageInput, S3Url, PurePosixPath]]:
    """Check every path and URL before any I/O; the error names the input."""
    checked = []
    seen: set[PurePosixPath] = set()
    for number, item in enumerate(inputs, start=1):
        dest = safe_relative_path(item.path, what=f"input {number} path")
        if dest in seen:
            raise ConfigError(f"input {number}: two inputs are staged to {dest}")
        seen.add(dest)
        if item.size is not None and item.size < 0:
            raise ConfigError(f"input {number}: size {item.size} is negative")
        if item.source.is_prefix:
            raise ConfigError(f"input {number}: {item.source} names a prefix, not an object")
        checked.append((item, item.source, dest))
    return checked


def plan_stage_in(
    inputs: Sequence[ResolvedInput],
    *,
    local: set[Digest],
    nfs_head: set[Digest],
    peers: frozenset[Digest] | set[Digest] = frozenset(),
) -> list[PlannedInput]:
    """The cheapest source of each input: local cache > NFS head > peer > S3."""
    plan = []
    for item in inputs:
        if item.digest is not None and item.digest in local:
            tier = Tier.LOCAL
        elif item.digest is not None and item.digest in nfs_head:
            tier = Tier.NFS_HEAD
        elif item.digest is not None and item.digest in peers:
            tier = Tier.PEER
        else:
            tier = Tier.S3
        plan.append(PlannedInput(item, tier))
    return plan


def _resolve(
    store: ObjectStore, checked: tuple[StageInput, S3Url, PurePosixPath], *, fetch_only: bool
) -> ResolvedInput:
    """What is known of an input: one HEAD unless the digest and size are given.

    The HEAD of an object without a digest gives its ETag, which finds it
    in the source index (no transfer if it was fetched before) and pins the
    ranged GETs of a large one to one version. With ``fetch_only`` (warming
    a cache from a listing, which gives sizes) a small object needs no HEAD:
    its one GET returns the same metadata, checked as the bytes arrive; such
    a warm-up does not consult the source index.
    """
    item, url, dest = checked
    small = item.size is not None and item.size < store.settings.multipart_threshold_bytes
    if item.size is not None and (item.digest is not None or (fetch_only and small)):
        listed = None if item.etag is None else ObjectInfo(url, item.size, None, item.etag)
        return ResolvedInput(url, dest, item.digest, item.size, listed)
    info = store.head(url)
    if info is None:
        raise NotFoundError(f"input {url} does not exist")
    digest = item.digest or info.digest
    return ResolvedInput(url, dest, digest, info.size, info)


class _Stager:
    def __init__(
        self,
        cache: NodeCache,
        store: ObjectStore,
        sandbox: Path,
        mode: Materialize,
        nfs_head: NodeCache | None,
        peers: Peers | None = None,
    ) -> None:
        self.cache = cache
        self.store = store
        self.sandbox = sandbox
        self.mode = mode
        self.nfs_head = nfs_head
        self.peers = peers

    def stage(self, planned: PlannedInput) -> StagedInput:
        item = planned.input
        entry, tier = self.entry_for(planned)
        dest = self.sandbox.joinpath(*item.dest.parts)
        used = self.cache.materialize(entry, dest, self.mode)
        return StagedInput(
            path=dest,
            digest=digest_of_entry(entry),
            size=item.size,
            tier=tier,
            verified=item.digest is not None,
            materialized_as=used,
        )

    def entry_for(self, planned: PlannedInput) -> tuple[Path, Tier]:
        """The cache entry for an input, fetched from its planned tier if missing.

        The tier reported is where the bytes came from: an entry another
        process fetched while this one waited on the same flight is a cache
        hit, not a read from S3.
        """
        item = planned.input
        if planned.tier is Tier.LOCAL and item.digest is not None:
            entry = self.cache.lookup(item.digest)
            if entry is not None:
                return entry, Tier.LOCAL
        filled_from: list[Tier] = []

        def fill_from(tier: Tier, fill: Fill) -> Path:
            def tracked(writer: HashingWriter) -> None:
                filled_from.append(tier)
                fill(writer)

            return self.cache.ensure(
                item.digest, item.size, tracked, flight_key=str(item.url), source=self._source(item)
            )

        entry = None
        if planned.tier is Tier.NFS_HEAD:
            entry = self._from_nfs_head(item, fill_from)
        if planned.tier is Tier.PEER:
            entry = self._from_peers(item, fill_from)
        if entry is None:
            try:
                entry = fill_from(Tier.S3, lambda writer: self._fetch(item, writer))
            except NotFoundError as exc:
                if self.peers is None or item.digest not in self.peers.holders:
                    raise
                raise UnreachableError(  # a node's output: retried, not a missing input
                    f"input {item.url} is only on nodes that did not serve it",
                    hint="the dispatcher makes it again if those nodes are lost",
                ) from exc
        return entry, filled_from[-1] if filled_from else Tier.LOCAL

    def fetch_many(self, items: Sequence[ResolvedInput]) -> list[tuple[Path, Tier]]:
        """Small objects from S3 into the cache as batches (:mod:`fsd.batchinsert`): no
        thread and no entry lock per object. Each entry, and where its bytes came from."""
        filled: set[int] = set()

        def fill(writers: Sequence[tuple[int, HashingWriter]]) -> list[StagerError | None]:
            filled.update(n for n, _ in writers)
            reads = [Read(items[n].url, writer) for n, writer in writers]
            outcomes = self.store.read_many(reads)
            return [_received(o, w) for o, (_, w) in zip(outcomes, writers, strict=True)]

        wanted = [Wanted(i.digest, i.size, self._source(i), str(i.url)) for i in items]
        entries = ensure_many(self.cache, wanted, fill)
        return [(entry, Tier.S3 if n in filled else Tier.LOCAL) for n, entry in enumerate(entries)]

    def _source(self, item: ResolvedInput) -> Source | None:
        """The object as the source index knows it, if it has no digest but an ETag."""
        if item.digest is not None or item.info is None or item.info.etag is None:
            return None
        return Source(self.store.endpoint_id, item.url, item.info.etag, item.size)

    def _fetch(self, item: ResolvedInput, writer: HashingWriter) -> None:
        """Stream the object into ``writer``; its own recorded digest and size must match."""
        info = self.store.read_into(item.url, writer, info=item.info, size_hint=item.size)
        check_received(info, writer.hasher)

    def _from_nfs_head(
        self,
        item: ResolvedInput,
        fill_from: Callable[[Tier, Fill], Path],
    ) -> Path | None:
        assert self.nfs_head is not None and item.digest is not None
        source = self.nfs_head.lookup(item.digest)
        if source is None:
            return None

        def copy(writer: HashingWriter) -> None:
            with source.open("rb") as handle:
                shutil.copyfileobj(handle, writer, 1024 * 1024)

        return fill_from(Tier.NFS_HEAD, copy)

    def _from_peers(
        self,
        item: ResolvedInput,
        fill_from: Callable[[Tier, Fill], Path],
    ) -> Path | None:
        """The entry from the first peer that serves the right bytes in time, else None."""
        assert self.peers is not None and item.digest is not None
        digest, client = item.digest, self.peers.client
        entries: list[Path] = []

        def attempt(address: str) -> None:
            entries.append(fill_from(Tier.PEER, lambda w: client.fetch(address, digest, w)))

        first_that_works(client, self.peers.holders.get(digest, ()), attempt)
        return entries[0] if entries else None


def _plan(
    resolved: Sequence[ResolvedInput],
    cache: NodeCache,
    nfs_head: NodeCache | None,
    peers: Peers | None = None,
) -> list[PlannedInput]:
    known = {item.digest for item in resolved if item.digest is not None}
    local = {d for d in known if cache.entry_path(d).exists()}
    head = {d for d in known if nfs_head is not None and nfs_head.entry_path(d).exists()}
    held = {d for d in known if peers is not None and peers.client.usable(peers.holders.get(d, ()))}
    return plan_stage_in(resolved, local=local, nfs_head=head, peers=held)


def warm(
    sources: Sequence[S3Url | StageInput],
    *,
    cache: NodeCache,
    store: ObjectStore,
    nfs_head: NodeCache | None = None,
    peers: Peers | None = None,
    workers: int = 8,
) -> list[tuple[S3Url, Path, Tier]]:
    """Fetch objects into the cache without a sandbox (preloading).

    A source is a URL, or a :class:`StageInput` whose known digest or size
    saves work; its ``path`` is not used.
    """
    inputs = [
        dataclasses.replace(item, path=f"input-{n}")
        if isinstance(item, StageInput)
        else StageInput(source=item, path=f"input-{n}")
        for n, item in enumerate(sources)
    ]
    stager = _Stager(cache, store, Path("/nonexistent-sandbox"), Materialize.LINK, nfs_head, peers)
    checked = validate_inputs(inputs)
    resolved = run_all(lambda i: _resolve(store, i, fetch_only=True), checked, workers=workers)
    planned = _plan(resolved, cache, nfs_head, peers)
    in_batches = [n for n, p in enumerate(planned) if _batched(p)]
    alone = [n for n, p in enumerate(planned) if not _batched(p)]
    batched = stager.fetch_many([resolved[n] for n in in_batches])
    fetched = dict(zip(in_batches, batched, strict=True))
    one_by_one = run_all(stager.entry_for, [planned[n] for n in alone], workers=workers)
    fetched.update(zip(alone, one_by_one, strict=True))
    return [(item.url, *fetched[n]) for n, item in enumerate(resolved)]


def _batched(planned: PlannedInput) -> bool:
    """Whether an input is fetched in a batch: a small object that only S3 holds."""
    return planned.tier is Tier.S3 and planned.input.size < SMALL_ENTRY_BYTES


def _received(outcome: ReadOutcome, writer: HashingWriter) -> StagerError | None:
    """What one read of a batch came to: None if its bytes match what it said."""
    if isinstance(outcome, OSError):
        return from_os_error(outcome, "fetch into the cache")
    if isinstance(outcome, StagerError):
        return outcome
    try:
        check_received(outcome, writer.hasher)
    except StagerError as exc:
        return exc
    return None


def resolve_inputs(
    inputs: Sequence[StageInput], *, store: ObjectStore, workers: int = 8
) -> list[ResolvedInput]:
    """Validate every input, then learn unknown digests and sizes (one HEAD each)."""
    checked = validate_inputs(inputs)
    return run_all(lambda item: _resolve(store, item, fetch_only=False), checked, workers=workers)


@contextlib.contextmanager
def staged_inputs(
    inputs: Sequence[StageInput],
    sandbox: Path,
    *,
    cache: NodeCache,
    store: ObjectStore,
    mode: Materialize = Materialize.LINK,
    nfs_head: NodeCache | None = None,
    peers: Peers | None = None,
    workers: int = 8,
) -> Iterator[list[StagedInput]]:
    """Stage ``inputs`` (as a spec names them) into ``sandbox``; pinned inside the block."""
    resolved = resolve_inputs(inputs, store=store, workers=workers)
    with staged_resolved(
        resolved,
        sandbox,
        cache=cache,
        store=store,
        mode=mode,
        nfs_head=nfs_head,
        peers=peers,
        workers=workers,
    ) as staged:
        yield staged


@contextlib.contextmanager
def staged_resolved(
    resolved: Sequence[ResolvedInput],
    sandbox: Path,
    *,
    cache: NodeCache,
    store: ObjectStore,
    mode: Materialize = Materialize.LINK,
    nfs_head: NodeCache | None = None,
    peers: Peers | None = None,
    workers: int = 8,
) -> Iterator[list[StagedInput]]:
    """Stage inputs already resolved by :func:`resolve_inputs` (no second HEAD)."""
    stager = _Stager(cache, store, sandbox, mode, nfs_head, peers)
    known = [item.digest for item in resolved if item.digest is not None]
    with cache.pinned(known):
        staged = run_all(stager.stage, _plan(resolved, cache, nfs_head, peers), workers=workers)
        learned = [s.digest for s in staged if s.digest not in known]
        with cache.pinned(learned):
            yield staged
