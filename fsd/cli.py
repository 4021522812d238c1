"""``stager cache ...``: the node cache from the command line."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from fsd.cache import NodeCache, digest_of_entry
from fsd.rootformat import Tier
from fsd.settings import CacheSettings, default_quota_bytes
from fsd.stagein import StageInput, warm
from stager.cli.context import CliState
from stager.digest import Digest
from stager.errors import IntegrityError, from_os_error
from stager.locations import S3Url
from stager.settings import load_component
from stager.tokens import load_token
from stager.units import format_size, parse_size


@dataclass
class CacheContext:
    core: CliState
    flags: dict[str, Any] = field(default_factory=dict)

    def open(self) -> NodeCache:
        settings = load_component(
            CacheSettings, self.flags, config_path=self.core.config_path, section="cache"
        )
        root = settings.cache_dir
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_os_error(exc, f"create cache directory {root}") from exc
        return NodeCache(
            root,
            quota_bytes=settings.cache_quota or default_quota_bytes(root),
            stale_after_s=settings.cache_stale_after_s,
            pin_stale_after_s=settings.cache_pin_stale_after_s,
            reserve_wait_s=settings.cache_reserve_wait_s,
            tier=settings.cache_tier,
        )


cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache root [$STAGER_CACHE_DIR or ~/.cache/stager/node-cache].",
)


@click.group(
    "cache",
    epilog="""\b
Examples:
  stager cache --cache-dir /scratch/stager fetch s3://my-bucket/apps/blast.tar.gz
  stager cache fetch s3://my-bucket/run1/reference/      # every object below a prefix
  stager cache stats
  stager cache --cache-dir /mnt/head --tier shared fetch s3://my-bucket/ref/   # an NFS head
  stager cache --cache-quota 100G evict --bytes 20G
""",
)
@cache_dir_option
@click.option("--cache-quota", help="Bytes the cache may hold, e.g. 140G [min(140G, 90% of disk)].")
@click.option(
    "--tier",
    "cache_tier",
    type=click.Choice([tier.value for tier in Tier]),
    help="scratch: a node's own disk, entries not fsynced; shared: an NFS head, every entry "
    "synced. Made so if new, checked if not [the cache's own; new: scratch].",
)
@click.pass_context
def cache_group(
    ctx: click.Context, /, cache_dir: Path | None, cache_quota: str | None, cache_tier: str | None
) -> None:
    """The node's content-addressed scratch cache, shared by every task on the node."""
    ctx.obj = CacheContext(
        ctx.obj, {"cache_dir": cache_dir, "cache_quota": cache_quota, "cache_tier": cache_tier}
    )


@cache_group.command("fetch")
@click.argument("urls", nargs=-1, required=True)
@click.pass_obj
def fetch(context: CacheContext, urls: tuple[str, ...]) -> None:
    """Warm the cache with objects (or every object below a prefix ending in /)."""
    store = context.core.object_store()
    expanded: list[S3Url | StageInput] = []
    for text in urls:
        url = S3Url.parse(text)
        if url.is_prefix:  # the listing gives sizes: small objects need no HEAD
            expanded.extend(
                StageInput(u, u.key, size=size, etag=etag) for u, size, etag in store.list(url)
            )
        else:
            expanded.append(url)
    started = time.monotonic()
    fetched = warm(
        expanded, cache=context.open(), store=store, workers=context.core.settings.files_in_flight
    )
    total = 0
    for url, entry, tier in fetched:
        size = entry.stat().st_size
        total += size
        click.echo(f"{digest_of_entry(entry)}  {format_size(size):>10}  {tier.value:<8}  {url}")
    click.echo(
        f"{len(fetched)} entries ({format_size(total)}) in {time.monotonic() - started:.2f} s"
    )


@cache_group.command("stats")
@click.pass_obj
def stats(context: CacheContext) -> None:
    """Entries, bytes used of the quota, reservations, pins and fetches."""
    cache = context.open()
    s = cache.stats()
    click.echo(f"cache      {cache.root}")
    click.echo(f"entries    {s.entries} ({s.pinned_entries} pinned)")
    click.echo(f"used       {format_size(s.used_bytes)} of {format_size(s.quota_bytes)}")
    click.echo(f"reserved   {format_size(s.reserved_bytes)} by fetches in progress")
    click.echo(f"fetches    {s.fetches}")
    click.echo(f"sources    {s.source_records} objects without a digest, {s.source_hits} hits")


@cache_group.command("ls")
@click.pass_obj
def ls(context: CacheContext) -> None:
    """Every entry, most recently used first; entries of objects without a digest show
    the source they were fetched from and how often it was found again."""
    cache = context.open()
    sources = {record.digest.hex: record for record in cache.source_records()}
    for entry in cache.entries():
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used_ns / 1e9))
        pin = " pinned" if entry.pinned else ""
        record = sources.get(entry.hex)
        found = f"  source {record.url} ({record.hits} hits)" if record else ""
        digest = Digest.from_hex(entry.hex)
        click.echo(f"{digest}  {format_size(entry.size_bytes):>10}  {used}{pin}{found}")


@cache_group.command("verify")
@click.pass_obj
def verify(context: CacheContext) -> None:
    """Re-hash every entry and drop damaged ones (exit 7 if any were found)."""
    cache = context.open()
    damaged = cache.verify()
    for digest in damaged:
        click.echo(f"damaged and dropped: {digest}")
    click.echo(f"verified {cache.stats().entries} entries, {len(damaged)} damaged")
    if damaged:
        raise IntegrityError(
            f"{len(damaged)} cache entries were damaged and dropped",
            hint="they will be fetched again on next use; check the disk",
        )


@cache_group.command("gc")
@click.pass_obj
def gc(context: CacheContext) -> None:
    """Sweep what dead processes left (temp files, reservations, pins); recount."""
    s = context.open().stats()  # opening runs the recovery
    click.echo(f"{s.entries} entries, {format_size(s.used_bytes)} used after recovery")


@cache_group.command("evict")
@click.option("--all", "all_unpinned", is_flag=True, help="Evict every unpinned entry.")
@click.option("--bytes", "free", help="Evict least recently used entries to free this much.")
@click.pass_obj
def evict(context: CacheContext, all_unpinned: bool, free: str | None) -> None:
    """Evict least recently used unpinned entries."""
    if not all_unpinned and free is None:
        raise click.UsageError("give --all or --bytes SIZE")
    victims = context.open().evict(all_unpinned=all_unpinned, free_bytes=parse_size(free or 0))
    freed = sum(v.size_bytes for v in victims)
    click.echo(f"evicted {len(victims)} entries ({format_size(freed)})")


@click.group("fsd")
def fsd_group() -> None:
    """The node file service: serves this node's cache to its peers, takes their mirrors."""


@fsd_group.command(
    "serve",
    epilog="""\b
Examples:
  stager fsd serve --listen 10.0.1.17:8766 --token-file ~/.stager-token
  STAGER_DISPATCHER_TOKEN=... stager fsd serve --listen 0.0.0.0:8766 --cache-dir /scratch/c
(`stager worker --serve HOST:PORT` runs the same service beside a worker.)
""",
)
@click.option("--listen", required=True, help="HOST:PORT on the nodes' private network.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the cluster token [$STAGER_DISPATCHER_TOKEN].",
)
@cache_dir_option
@click.option("--cache-quota", help="Bytes the cache may hold, e.g. 140G.")
@click.pass_obj
def serve(
    core: CliState,
    /,
    listen: str,
    token_file: Path | None,
    cache_dir: Path | None,
    cache_quota: str | None,
) -> None:
    """Serve cache entries to peers (signed requests only), receive mirrored outputs
    and write them behind to S3, until SIGTERM or SIGINT."""
    from fsd.service import NodeService

    cache = CacheContext(core, {"cache_dir": cache_dir, "cache_quota": cache_quota}).open()
    service = NodeService(
        cache,
        core.object_store(),
        load_token(token_file),
        listen,
        log=lambda line: click.echo(line, err=True),
    )
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: signals.append(number))
    address = service.start()
    click.echo(f"node file service on {address}, cache {cache.root}", err=True)
    try:
        while not signals:
            time.sleep(0.2)
    finally:
        counts = service.stop()
    click.echo(
        f"stopped; served {format_size(service.files.served_bytes)}, received "
        f"{format_size(service.files.received_bytes)}, {counts.pending} writes behind pending",
        err=True,
    )
