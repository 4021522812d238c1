"""What is known of one stored object, and the check a received copy must pass.

Every object stager writes carries its digest in user metadata
(``x-amz-meta-stager-digest: xxh3-128:...``); objects written by other
tools carry none and are hashed as they stream, then reported unverified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from stager.digest import Digest, Hasher
from stager.errors import DigestFormatError, IntegrityError
from stager.locations import S3Url

DIGEST_METADATA_KEY = "stager-digest"
DIGEST_HEADER = f"x-amz-meta-{DIGEST_METADATA_KEY}"  # the same, as a (lower-case) header
# The key of the task whose run wrote an output (see docs/task-spec.md, "Outputs and attempts").
TASK_METADATA_KEY = "stager-task"
TASK_HEADER = f"x-amz-meta-{TASK_METADATA_KEY}"
# Which attempt of which task wrote it, ``<task id>/<attempt>``: orders two runs of one task.
GENERATION_METADATA_KEY = "stager-generation"
GENERATION_HEADER = f"x-amz-meta-{GENERATION_METADATA_KEY}"


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD (or a GET's headers) tells about one object."""

    url: S3Url
    size: int
    digest: Digest | None
    etag: str | None = None
    task: str | None = None  # the key of the task that wrote it, if a task did
    generation: str | None = None  # ``<task id>/<attempt>`` of the dispatcher's lease


class Listed(NamedTuple):
    """One object as a listing shows it (no metadata, so no digest)."""

    url: S3Url
    size: int
    etag: str | None = None


@dataclass(frozen=True)
class WriteCondition:
    """When a write may happen: the key is free (``absent``), or still holds ``etag``."""

    absent: bool = False
    etag: str | None = None

    def headers(self) -> dict[str, str]:
        if self.absent:
            return {"If-None-Match": "*"}
        return {"If-Match": self.etag} if self.etag else {}


def recorded_digest(url: S3Url, text: str | None) -> Digest | None:
    """The digest an object's metadata records; metadata that is not one is damage."""
    if text is None:
        return None
    try:
        return Digest.parse(text)
    except DigestFormatError as exc:
        raise IntegrityError(f"{url}: its recorded digest is malformed") from exc


def digest_metadata(
    digest: Digest, task: str | None = None, generation: str | None = None
) -> dict[str, str]:
    """The user metadata that records ``digest`` (and the writing task and run) on an object."""
    metadata = {DIGEST_METADATA_KEY: str(digest)}
    if task:
        metadata[TASK_METADATA_KEY] = task
    if generation:
        metadata[GENERATION_METADATA_KEY] = generation
    return metadata


def check_received(info: ObjectInfo, got: Hasher) -> None:
    """Raise :class:`IntegrityError` unless ``got`` matches ``info``'s size and digest."""
    if got.size != info.size:
        raise IntegrityError(f"{info.url}: received {got.size} bytes, expected {info.size}")
    if info.digest is not None and got.digest != info.digest:
        raise IntegrityError(
            f"{info.url}: content digest {got.digest} does not match recorded {info.digest}"
        )
