"""Running a node's file service and its write-behind writer in background threads.

:class:`NodeService` is what ``stager fsd serve`` runs on its own and what
``stager worker --serve`` runs beside its task slots: the HTTP service
(:mod:`fsd.peerserver`) in a thread with its own event loop, and the
outbox writer (:class:`~fsd.outbox.WriteBehind`). ``start`` returns once
the port is bound (or raises); ``stop`` ends both.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

from fsd.cache import NodeCache
from fsd.outbox import Outbox, OutboxCounts, OutboxItem, WriteBehind, outbox_path
from fsd.peerauth import RequestGuard
from fsd.peerclient import parse_address
from fsd.peerserver import FileService, serving
from stager.errors import StagerError, UnreachableError
from stager.objectstore import ObjectStore


def advertised(listen: str, bound_port: int) -> str:
    """The address peers should use: the listen host, or this host's name for a wildcard."""
    host, _ = parse_address(listen)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"


class NodeService:
    def __init__(
        self,
        cache: NodeCache,
        store: ObjectStore,
        token: str,
        listen: str,
        *,
        on_written: Callable[[OutboxItem], None] = lambda item: None,
        log: Callable[[str], None] = lambda line: None,
        write_at_once: bool = True,
    ) -> None:
        """``write_at_once=False``: the outbox is not written until :meth:`start_writing`
        (a worker first hears from its dispatcher whether its rows still stand)."""
        parse_address(listen)  # a malformed address fails before anything starts
        self.listen = listen
        self.outbox = Outbox(outbox_path(cache.root))
        self.files = FileService(cache, RequestGuard(token), self.outbox)
        self.writer = WriteBehind(self.outbox, cache, store, on_written=on_written, log=log)
        self.address = ""
        self._write_at_once = write_at_once
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: StagerError | None = None
        self._thread = threading.Thread(target=self._run, name="node-service", daemon=True)

    def start(self) -> str:
        """Bind, serve and write behind in the background; the address peers should use."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        if self._write_at_once:
            self.start_writing()
        return self.address

    def start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self.writer.start()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        host, port = parse_address(self.listen)
        try:
            async with serving(self.files, host, port) as bound:
                self.address = advertised(self.listen, bound)
                self._ready.set()
                await self._stop.wait()
        except StagerError as exc:
            self._error = exc
        except OSError as exc:
            self._error = UnreachableError(f"the node file service stopped: {exc}")
        finally:
            self._ready.set()

    def stop(self) -> OutboxCounts:
        """Stop serving and writing; what the outbox held at the end (pending rows stay)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        if self._writing:
            self.writer.stop()
        counts = self.outbox.counts()
        self.outbox.close()
        return counts
