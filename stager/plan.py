"""Transfer planning: pure functions from what is known to what to do.

Nothing here performs I/O. Push and pull call these, then execute the plan;
tests call them directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stager.errors import ConfigError
from stager.locations import S3Url, safe_relative_path


@dataclass(frozen=True)
class Source:
    """One file to push: its logical path below the destination, and where it is.

    ``local_path`` is set for files on local disk; ``remote_url`` (an fsspec
    URL) for anything else, which is spooled to local disk while hashed.
    """

    logical: str
    size: int
    local_path: Path | None = None
    remote_url: str | None = None


class PushAction(enum.Enum):
    UPLOAD = "upload"  # not in the store, or a different size: upload without asking
    COMPARE = "compare"  # same size in the store: compare digests, upload if they differ


@dataclass(frozen=True)
class PushItem:
    source: Source
    url: S3Url
    action: PushAction


def plan_push(sources: Sequence[Source], dest: S3Url, listing: Mapping[str, int]) -> list[PushItem]:
    """Map each source to its key below ``dest`` and decide whether it needs a digest check.

    ``listing`` maps existing keys below ``dest`` to their sizes. Two sources
    that would land on one key are refused before anything moves.
    """
    items: list[PushItem] = []
    seen: dict[str, Source] = {}
    for source in sources:
        url = dest.child(str(safe_relative_path(source.logical, what="source path")))
        if url.key in seen:
            raise ConfigError(
                f"two sources map to {url}: {_where(seen[url.key])} and {_where(source)}",
                hint="push them to different prefixes",
            )
        seen[url.key] = source
        same_size = listing.get(url.key) == source.size
        items.append(PushItem(source, url, PushAction.COMPARE if same_size else PushAction.UPLOAD))
    return items


def _where(source: Source) -> str:
    return str(source.local_path or source.remote_url)


@dataclass(frozen=True)
class PullItem:
    url: S3Url
    size: int
    dest: Path


def plan_pull(
    objects: Iterable[tuple[S3Url, int]], prefix: S3Url, dest_dir: Path
) -> list[PullItem]:
    """Map every object below ``prefix`` to a file below ``dest_dir``.

    Each key's remainder is checked as a safe relative path before any I/O, so
    a key like ``p/../../etc/x`` is refused rather than written outside
    ``dest_dir``. Zero-byte "directory marker" keys ending in '/' are skipped.
    """
    items = []
    for url, size in objects:
        relative = url.relative_to(prefix)
        if relative == "" or relative.endswith("/"):
            continue
        path = safe_relative_path(relative, what=f"key {url.key!r} maps to")
        items.append(PullItem(url, size, dest_dir.joinpath(*path.parts)))
    return sorted(items, key=lambda item: item.url.key)


def single_pull_dest(url: S3Url, dest: Path, *, dest_is_dir: bool) -> Path:
    """Where one object lands: inside ``dest`` if it is a directory, else at ``dest``."""
    if not dest_is_dir:
        return dest
    name = url.key.rsplit("/", 1)[-1]
    return dest / safe_relative_path(name, what=f"key {url.key!r} maps to").name
