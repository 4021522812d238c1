"""A fault-injecting HTTP proxy in front of an S3 endpoint (for the chaos soak and tests).

Clients are pointed at the proxy instead of the server. Each request is,
by the odds given:

- answered at once with a 500, a 503 or a 503 ``SlowDown`` (not forwarded);
- forwarded, and its answer cut off halfway through the body (the
  connection is closed: the client sees a reset mid-body);
- forwarded and delayed before the answer starts;
- forwarded with one byte of its body flipped (damage in flight; the length
  and every header stay as the server sent them);
- or forwarded untouched.

And a request whose path names what a test holds back is never answered;
one whose path names what a test slows is forwarded ``slow_s`` late; one
whose path names what a test refuses gets a 403 (the first few times).

Requests are forwarded with their ``Host`` header as the client sent it,
so signatures (SigV4 signs the host) still verify. The odds come from one
seeded random generator, so a soak can be run again the same way. Counts
of what was injected are kept for the report, and every request's method,
path and headers (with no faults, the proxy is a recorder for tests).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass

import aiohttp
from aiohttp import web

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


@dataclass(frozen=True, kw_only=True)
class Faults:
    error_rate: float = 0.05  # answered 500/503/SlowDown without reaching the server
    reset_rate: float = 0.01  # the answer's connection closed halfway through its body
    delay_rate: float = 0.02  # the answer held back ``delay_s`` first
    delay_s: float = 0.5
    flip_rate: float = 0.0  # one byte of the answer's body flipped on the way
    seed: int = 7
    # Requests whose path holds one of these are never answered (a server that hangs
    # mid-request), until the proxy stops.
    hold_paths: tuple[str, ...] = ()
    # Requests whose path holds one of these are forwarded only after ``slow_s``.
    slow_paths: tuple[str, ...] = ()
    slow_s: float = 5.0
    # The first ``refuse_times`` requests whose path holds one of these are answered 403
    # AccessDenied (a permanent error: clients do not retry it).
    refuse_paths: tuple[str, ...] = ()
    refuse_times: int = 1


def requested_bytes(headers: dict[str, str], size: int) -> int:
    """Bytes a recorded GET of a ``size``-byte object asked for: its range, or all."""
    spec = headers.get("range")
    if spec is None:
        return size
    first, _, last = spec.removeprefix("bytes=").partition("-")
    if not first:  # the last N bytes
        return min(int(last), size)
    end = size - 1 if not last else min(int(last), size - 1)
    return max(0, end - int(first) + 1)


NO_FAULTS = Faults(error_rate=0.0, reset_rate=0.0, delay_rate=0.0)  # a recorder only


class FaultProxy:
    """Runs in its own thread with its own event loop; ``start`` returns its endpoint."""

    def __init__(self, upstream: str, faults: Faults) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults
        self.injected: Counter[str] = Counter()
        # Every request: (method, path and query, headers with lower-cased names).
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._random = random.Random(faults.seed)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        return self.endpoint

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _draw(self) -> str:
        roll = self._random.random()
        f = self.faults
        for name, odds in (
            ("error", f.error_rate),
            ("reset", f.reset_rate),
            ("delay", f.delay_rate),
            ("flip", f.flip_rate),
        ):
            if roll < odds:
                return name
            roll -= odds
        return "none"

    async def _serve(self) -> None:
        # A reset is the point, not news: aiohttp would log each one with a traceback.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            await web.SockSite(runner, self._socket).start()
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.method, request.raw_path, {k.lower(): v for k, v in request.headers.items()})
        )
        if any(part in request.raw_path for part in self.faults.hold_paths):
            self.injected["hold"] += 1
            assert self._stop is not None
            await self._stop.wait()
            return web.Response(status=503)
        if any(part in request.raw_path for part in self.faults.slow_paths):
            self.injected["slow"] += 1
            await asyncio.sleep(self.faults.slow_s)
        refused = any(part in request.raw_path for part in self.faults.refuse_paths)
        if refused and self.injected["refuse"] < self.faults.refuse_times:
            self.injected["refuse"] += 1
            return web.Response(status=403, body=ACCESS_DENIED, content_type="application/xml")
        fault = self._draw()
        self.injected[fault] += 1
        if fault == "error":
            status, body = self._random.choice([(500, b""), (503, b""), (503, SLOW_DOWN)])
            return web.Response(status=status, body=body, content_type="application/xml")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            if fault == "delay":
                await asyncio.sleep(self.faults.delay_s)
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers[key] = value
            await response.prepare(request)
            length = int(upstream.headers.get("Content-Length", "0") or 0)
            sent = 0
            async for chunk in upstream.content.iter_chunked(256 * 1024):
                if fault == "reset" and sent + len(chunk) > length // 2:
                    if request.transport is not None:
                        request.transport.close()  # the client sees the body end early
                    return response
                if fault == "flip" and sent == 0 and chunk:
                    middle = len(chunk) // 2
                    chunk = chunk[:middle] + bytes([chunk[middle] ^ 0x01]) + chunk[middle + 1 :]
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
            return response
