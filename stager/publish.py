"""Putting one output at its final key without undoing another attempt's accepted result.

Two attempts of one task may both reach stage-out: a worker stopped past
its lease (SIGSTOP, a long GC pause, a partition) resumes after another
attempt's result was accepted. Fencing refuses its completion, but its
uploads would still land. So outputs are written conditionally:

1. ``PUT`` with ``If-None-Match: *``: the key is free, the object is ours.
2. The key is taken. Its object holds the same bytes: nothing to do.
3. It was written by another run of the *same task* (its ``stager-task``
   metadata holds this task's key): that run got there first, and its
   bytes are as valid an output of this task as ours. They are adopted:
   this run's result records them and nothing is written. A stale attempt
   therefore never replaces what an accepted result points to, and the
   bytes at an output's key always hash to the digest its result records.
4. Anything else (an older run with other inputs, another tool's file), or
   ``replace_own`` (``stager wrap --force``): replaced with ``If-Match`` on
   the ETag just seen, so only the object that was looked at is replaced;
   if it changed meanwhile, start again at 2 (bounded).

A writer that knows its *generation* (``<task id>/<attempt>`` of the
dispatcher's lease) orders itself against another run of the same task id
before rules 3 and 4: a later attempt's object is never replaced (ours is
stale: it is adopted, ``superseded``), and an earlier attempt's is always
replaced. This is what keeps outputs written behind in order: a mirror's
write of a run the dispatcher has since redone cannot land over the redo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stager.digest import Digest
from stager.errors import PreconditionFailedError, StageOutError
from stager.locations import S3Url
from stager.objectinfo import WriteCondition
from stager.objectstore import ObjectStore

ROUNDS = 4


@dataclass(frozen=True)
class Published:
    """What the key holds once the output is published: ours, or an adopted twin's."""

    digest: Digest
    size: int
    adopted: bool
    superseded: bool = False  # a later attempt of the same task had written it


def publish(
    store: ObjectStore,
    source: Path | bytes,
    url: S3Url,
    *,
    digest: Digest,
    size: int,
    task: str,
    replace_own: bool = False,
    generation: str | None = None,
) -> Published:
    """Publish ``source`` (a file, or a small output's bytes read once) at ``url`` by the
    rules above; local read errors are ``OSError``."""
    condition = WriteCondition(absent=True)
    for _ in range(ROUNDS):
        try:
            if isinstance(source, bytes):
                store.upload_bytes(
                    source,
                    url,
                    digest=digest,
                    task=task,
                    generation=generation,
                    condition=condition,
                )
            else:
                store.upload_file(
                    source,
                    url,
                    digest=digest,
                    size=size,
                    task=task,
                    generation=generation,
                    condition=condition,
                )
            return Published(digest, size, adopted=False)
        except PreconditionFailedError:
            pass
        there = store.head(url)
        order = compare_generations(generation, there.generation if there else None)
        if there is None:  # removed meanwhile
            condition = WriteCondition(absent=True)
        elif there.digest == digest and there.size == size:
            return Published(digest, size, adopted=False)
        elif order < 0 and there.digest is not None:
            return Published(there.digest, there.size, adopted=True, superseded=True)
        elif order > 0:
            condition = WriteCondition(etag=there.etag)
        elif there.task == task and there.digest is not None and not replace_own:
            return Published(there.digest, there.size, adopted=True)
        else:
            condition = WriteCondition(etag=there.etag)
    raise StageOutError(f"{url} kept changing while this run tried to publish its output")


def compare_generations(ours: str | None, theirs: str | None) -> int:
    """1 if ours is a later attempt of the same task id, -1 if earlier, else 0."""
    if not ours or not theirs:
        return 0
    our_id, _, our_attempt = ours.rpartition("/")
    their_id, _, their_attempt = theirs.rpartition("/")
    if our_id != their_id or not our_attempt.isdigit() or not their_attempt.isdigit():
        return 0
    return (int(our_attempt) > int(their_attempt)) - (int(our_attempt) < int(their_attempt))
