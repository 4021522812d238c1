"""Many small entries at once: one claim, one fetch of them all, one publication.

A process that wants many small entries (a prefix warmed, a task's many
inputs) does not take an entry lock, a reservation and a publication per
entry. Per batch of up to :data:`BATCH_OBJECTS` it takes the cache lock
once to claim the flights no one else has under way (with their room), hands
every claimed entry's writer to one *batch fill* (the native client keeps
them all in flight from this one thread), checks each, and takes the cache
lock once more to publish them all. An entry is written once, to a temp file
in ``tmp/``, and renamed into ``data/``; on a scratch cache nothing is synced.

A lone small entry goes through :meth:`NodeCache.ensure` (its flight lock
and one publication cost less than a claim and a publication, each a ledger
rewrite), and so does what a batch does not claim, one by one: a flight
another process has under way (ensure waits for it, then finds the entry),
an entry with no room to spare without waiting, and an entry whose bytes
did not match (fetched once more there, then refused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fsd.cache import SMALL_ENTRY_BYTES, NodeCache, Staged, Wanted
from stager.atomic import TEMP_MARKER, SlicedFile
from stager.digest import Hasher, HashingWriter
from stager.errors import IntegrityError, StagerError, from_os_error
from stager.parallel import BATCH_OBJECTS

# Fills the writers of the wanted entries at the given indices, all at once;
# each one's error, or None.
BatchFill = Callable[[Sequence[tuple[int, HashingWriter]]], Sequence[StagerError | OSError | None]]


def ensure_many(cache: NodeCache, wanted: Sequence[Wanted], fill: BatchFill) -> list[Path]:
    """The entry of every ``wanted``, in order, fetched by ``fill`` where missing.

    The same guarantees as :meth:`NodeCache.ensure` for each (single flight
    across processes, verified before published). Entries that are fetched
    and verified are published even when others fail; then the first error
    is raised.
    """
    first: dict[str, int] = {}  # each flight once, in the order asked
    for n, w in enumerate(wanted):
        first.setdefault(w.name, n)
    paths: dict[str, Path] = {}
    missing = []
    for name, n in first.items():
        found = cache.known(wanted[n])
        if found is not None:
            paths[name] = found
        else:
            missing.append(n)
    errors: list[StagerError] = []
    failed: set[str] = set()
    small = [n for n in missing if wanted[n].size < SMALL_ENTRY_BYTES]
    if len(small) == 1:  # a batch of one: ensure() below costs less
        small = []
    for start in range(0, len(small), BATCH_OBJECTS):
        chunk = small[start : start + BATCH_OBJECTS]
        key, claimed = cache.claim([wanted[n] for n in chunk])
        if key is None:
            continue
        names = {w.name for w in claimed}
        mine = [n for n in chunk if wanted[n].name in names]
        outcomes = _fetch_claimed(cache, key, wanted, mine, fill)
        for n, outcome in zip(mine, outcomes, strict=True):
            if isinstance(outcome, Path):
                paths[wanted[n].name] = outcome
            elif not isinstance(outcome, IntegrityError):  # a mismatch: once more, alone
                errors.append(outcome)
                failed.add(wanted[n].name)
    for n in missing:
        w = wanted[n]
        if w.name in paths or w.name in failed:
            continue
        try:
            paths[w.name] = cache.ensure(
                w.digest, w.size, _one(fill, n), flight_key=w.flight_key, source=w.source
            )
        except StagerError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return [paths[w.name] for w in wanted]


def _one(fill: BatchFill, n: int) -> Callable[[HashingWriter], None]:
    """A fill for :meth:`NodeCache.ensure`: the batch fill, for entry ``n`` alone."""

    def one(writer: HashingWriter) -> None:
        error = fill([(n, writer)])[0]
        if error is not None:
            raise error

    return one


def _fetch_claimed(
    cache: NodeCache, key: str, wanted: Sequence[Wanted], claimed: Sequence[int], fill: BatchFill
) -> list[Path | StagerError]:
    """Fetch, check and publish the entries of claim ``key``; each one's path or error.
    The claim ends here, whatever happens."""
    opened: list[tuple[int, Path, SlicedFile, HashingWriter]] = []
    ended = False
    try:
        for n in claimed:
            temp = cache.root / "tmp" / f"{wanted[n].name}.{key}{TEMP_MARKER}"
            try:
                handle = SlicedFile(temp, "xb", write_behind=cache.synced)
            except OSError as exc:
                raise from_os_error(exc, f"create {temp}") from exc
            opened.append((n, temp, handle, HashingWriter(handle)))
        filled = fill([(n, writer) for n, _, _, writer in opened])
        outcomes: list[Staged | StagerError] = []
        for (n, temp, handle, writer), error in zip(opened, filled, strict=True):
            outcome = _checked(wanted[n], writer.hasher, error)
            if isinstance(outcome, StagerError):
                handle.close()
                temp.unlink(missing_ok=True)
                outcomes.append(outcome)
                continue
            try:
                cache.ready_staged(temp, handle.fileno())
                handle.close()
                outcomes.append(
                    Staged(temp, writer.hasher.digest, wanted[n].size, wanted[n].source)
                )
            except OSError as exc:
                handle.close()
                temp.unlink(missing_ok=True)
                outcomes.append(from_os_error(exc, f"write {temp}"))
        staged = [o for o in outcomes if isinstance(o, Staged)]
        published = iter(cache.publish_claimed(key, staged))  # which ends the claim
        ended = True
        return [next(published) if isinstance(o, Staged) else o for o in outcomes]
    finally:
        if not ended:
            cache.end_claim(key)
        for _, temp, handle, _ in opened:
            handle.close()
            temp.unlink(missing_ok=True)  # left only by a failure


def _checked(w: Wanted, got: Hasher, error: StagerError | OSError | None) -> StagerError | None:
    if isinstance(error, OSError):
        return from_os_error(error, "fetch into the cache")
    if error is not None:
        return error
    if got.size != w.size:
        return IntegrityError(f"fetched {got.size} bytes for an input of {w.size}")
    if w.digest is not None and got.digest != w.digest:
        return IntegrityError(f"fetched bytes hash to {got.digest}, expected {w.digest}")
    return None
