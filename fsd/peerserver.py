"""The node file service: a node's cache, served to its peers over the private network.

Routes (docs/node-service.md is the contract)::

    GET  /v1/entries/<digest>   the entry's bytes (Range requests; sendfile)
    PUT  /v1/entries/<digest>   a mirrored output, streamed into the cache
    GET  /v1/status             what the cache and the write-behind outbox hold

Guarantees:

- every request is checked by :class:`~fsd.peerauth.RequestGuard` before
  anything else; a refusal is a 401 with the same body whatever was asked,
  so an unsigned caller learns nothing, not even whether a digest exists;
- nothing from a request becomes a path unless it parses as a digest;
- an entry is served while pinned (eviction waits) and only after the
  cache's seal check (an entry a task wrote through is re-hashed first);
- a received file becomes an entry only once its bytes hash to the digest
  in its path and their count matches its Content-Length (the cache's own
  rule); with ``Stager-Write-Behind`` it is also queued in the node's
  outbox before the 201 is sent, so a mirror acknowledged is a mirror that
  will reach S3 even if its producer dies now;
- no token, signature or header value is ever logged or put in an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from fsd.cache import NodeCache
from fsd.outbox import Outbox
from fsd.peerauth import HEADER, Refused, RequestGuard
from fsd.peerwire import (
    GENERATION_HEADER,
    TASK_HEADER,
    WRITE_BEHIND_HEADER,
    ServiceStatus,
    put_subject,
)
from stager.digest import Digest, HashingWriter
from stager.errors import (
    CacheFullError,
    DigestFormatError,
    DiskFullError,
    IntegrityError,
    InvalidUrlError,
    StagerError,
    UnreachableError,
)
from stager.locations import S3Url

READ_STALL_S = 30.0  # a mirror sender silent this long is dropped
CHUNK_BYTES = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refused() -> web.Response:
    return web.json_response({"error": "not signed with the cluster token"}, status=401)


class FileService:
    """The aiohttp application of one node; :func:`serving` runs it."""

    def __init__(self, cache: NodeCache, guard: RequestGuard, outbox: Outbox | None) -> None:
        self.cache = cache
        self.guard = guard
        self.outbox = outbox
        self.served_bytes = 0
        self.received_bytes = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**4)
        app.router.add_get("/v1/entries/{digest}", self._signed(self.get_entry))
        app.router.add_put("/v1/entries/{digest}", self._signed(self.put_entry))
        app.router.add_get("/v1/status", self._signed(self.status))
        return app

    def _signed(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            digest = request.match_info.get("digest", "-")
            subject = digest
            if request.method == "PUT":
                subject = put_subject(
                    digest,
                    request.headers.get(WRITE_BEHIND_HEADER, ""),
                    request.headers.get(TASK_HEADER, ""),
                    request.headers.get(GENERATION_HEADER, ""),
                )
            try:
                self.guard.check(
                    request.method, request.raw_path, subject, request.headers.get(HEADER)
                )
            except Refused:
                return _refused()
            return await handler(request)

        return checked

    async def get_entry(self, request: web.Request) -> web.StreamResponse:
        digest = _digest_of(request)
        if digest is None:
            return web.json_response({"error": "not a digest"}, status=400)
        with contextlib.ExitStack() as pin:  # the cache's locks are files: not on the loop
            await asyncio.to_thread(pin.enter_context, self.cache.pinned([digest]))
            entry = await asyncio.to_thread(self.cache.lookup, digest)
            if entry is None:
                return web.json_response({"error": "not held here"}, status=404)
            response = web.FileResponse(entry, chunk_size=CHUNK_BYTES)
            response.content_type = "application/octet-stream"
            await response.prepare(request)
            await response.write_eof()
        self.served_bytes += response.content_length or 0
        return response

    async def put_entry(self, request: web.Request) -> web.StreamResponse:
        digest = _digest_of(request)
        size = request.content_length
        if digest is None or size is None:
            return web.json_response({"error": "not a digest, or no length"}, status=400)
        try:
            destination = _write_behind(request)
        except InvalidUrlError as exc:
            return web.json_response({"error": exc.message}, status=400)
        loop = asyncio.get_running_loop()

        def fill(writer: HashingWriter) -> None:
            while True:
                read = asyncio.run_coroutine_threadsafe(request.content.readany(), loop)
                try:
                    chunk = read.result(timeout=READ_STALL_S)
                except TimeoutError as exc:
                    read.cancel()
                    raise UnreachableError("the sender of a mirrored file went silent") from exc
                if not chunk:
                    return
                writer.write(chunk)

        try:
            await asyncio.to_thread(
                self.cache.ensure, digest, size, fill, flight_key=f"mirror-{digest.hex}"
            )
            if destination is not None and self.outbox is not None:
                url, task = destination
                generation = request.headers.get(GENERATION_HEADER) or None
                await asyncio.to_thread(
                    functools.partial(self.outbox.add, generation=generation),
                    digest,
                    size,
                    url,
                    task,
                )
        except IntegrityError as exc:
            return web.json_response({"error": exc.message}, status=422)
        except (CacheFullError, DiskFullError) as exc:
            return web.json_response({"error": exc.message}, status=507)
        except StagerError as exc:
            return web.json_response({"error": exc.message}, status=500)
        self.received_bytes += size
        return web.json_response({"digest": str(digest), "size": size}, status=201)

    async def status(self, request: web.Request) -> web.StreamResponse:
        stats = await asyncio.to_thread(self.cache.stats)
        counts = self.outbox.counts() if self.outbox is not None else None
        body = ServiceStatus(
            entries=stats.entries,
            used_bytes=stats.used_bytes,
            quota_bytes=stats.quota_bytes,
            outbox_pending=counts.pending if counts else 0,
            outbox_written=counts.written if counts else 0,
            outbox_lost=counts.lost if counts else 0,
        )
        return web.Response(body=body.to_json(), content_type="application/json")


def _digest_of(request: web.Request) -> Digest | None:
    try:
        return Digest.parse(request.match_info["digest"])
    except DigestFormatError:
        return None


def _write_behind(request: web.Request) -> tuple[S3Url, str] | None:
    text = request.headers.get(WRITE_BEHIND_HEADER)
    if not text:
        return None
    url = S3Url.parse(text)
    if url.is_prefix:
        raise InvalidUrlError(f"{WRITE_BEHIND_HEADER} names a prefix")
    return url, request.headers.get(TASK_HEADER, "")


@contextlib.asynccontextmanager
async def serving(service: FileService, host: str, port: int) -> AsyncIterator[int]:
    """Serve until the block ends; yields the port (the one chosen when ``port`` is 0)."""
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UnreachableError(
            f"cannot listen on {host}:{port}: {reason}",
            hint="choose another port, or an address of this host",
        ) from exc
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        sock.close()
