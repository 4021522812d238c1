"""Talking to other nodes' file services: fetch an entry, mirror one, ask for status.

A peer is another node that may be dead, partitioned, overloaded or
broken, so every call is bounded (docs/node-service.md, "Peers that fail"):

- connecting takes at most ``connect_timeout_s`` (a dead node's address
  drops packets without an answer: only this timeout notices);
- once connected, a silence of ``stall_s`` ends the call, and after
  ``grace_s`` the transfer must keep ``min_bytes_per_s`` on average, so a
  peer that trickles bytes is dropped too, not waited on for an hour;
- a peer that failed is avoided for ``avoid_s`` by this client and listed
  by :meth:`PeerClient.take_bad` for the caller to report.

Failures are :class:`UnreachableError` (refused, silent, slow, a 5xx),
:class:`AccessDeniedError` (our signature refused) or :class:`NotFoundError`
(the peer does not hold the entry). Bytes are not trusted here: the cache
that receives them checks their digest, as on every other hop.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fsd.peerauth import HEADER, Signer
from fsd.peerwire import (
    GENERATION_HEADER,
    TASK_HEADER,
    WRITE_BEHIND_HEADER,
    ServiceStatus,
    put_subject,
)
from stager.digest import Digest
from stager.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    StagerError,
    UnreachableError,
)
from stager.locations import S3Url

CHUNK_BYTES = 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


@dataclass(frozen=True, kw_only=True)
class PeerLimits:
    connect_timeout_s: float = 1.0
    stall_s: float = 2.0
    grace_s: float = 2.0
    min_bytes_per_s: float = 4 * 1024 * 1024
    avoid_s: float = 60.0


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a pair; anything else is a ConfigError."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{text!r} is not HOST:PORT", hint="give an address like 10.0.0.5:8766")
    return host, int(port)


class _Transfer:
    """The minimum-throughput rule over one body."""

    def __init__(self, limits: PeerLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.started = clock()
        self.moved = 0

    def count(self, nbytes: int, address: str) -> None:
        self.moved += nbytes
        elapsed = self.clock() - self.started
        if elapsed > self.limits.grace_s and self.moved / elapsed < self.limits.min_bytes_per_s:
            raise UnreachableError(
                f"peer {address} is too slow ({self.moved / elapsed / 1e6:.1f} MB/s)"
            )


class PeerClient:
    """Thread-safe; one per node."""

    def __init__(
        self,
        token: str,
        *,
        limits: PeerLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._signer = Signer(token)
        self.limits = limits or PeerLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._avoid: dict[str, float] = {}
        self._unreported: list[str] = []

    def __repr__(self) -> str:
        return "PeerClient(<cluster token>)"

    # -- which peers to try -------------------------------------------------------

    def usable(self, addresses: Sequence[str]) -> list[str]:
        """``addresses`` without the peers that failed lately, in the given order."""
        now = self._clock()
        with self._lock:
            return [a for a in addresses if self._avoid.get(a, 0.0) <= now]

    def mark_bad(self, address: str) -> None:
        with self._lock:
            self._avoid[address] = self._clock() + self.limits.avoid_s
            if address not in self._unreported:
                self._unreported.append(address)

    def has_bad(self) -> bool:
        """Whether peers failed since the last :meth:`take_bad`."""
        with self._lock:
            return bool(self._unreported)

    def take_bad(self) -> list[str]:
        """The peers that failed since the last call (to report to the dispatcher)."""
        with self._lock:
            bad, self._unreported = self._unreported, []
        return bad

    # -- calls --------------------------------------------------------------------

    def _connect(self, address: str) -> http.client.HTTPConnection:
        host, port = parse_address(address)
        connection = http.client.HTTPConnection(host, port, timeout=self.limits.connect_timeout_s)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise UnreachableError(f"peer {address} did not accept a connection: {exc}") from exc
        assert connection.sock is not None
        connection.sock.settimeout(self.limits.stall_s)
        return connection

    def _check(self, response: http.client.HTTPResponse, address: str, what: str) -> None:
        if response.status < 300:
            return
        if response.status in (401, 403):
            raise AccessDeniedError(
                f"peer {address} refused our signature",
                hint="every node must use the same cluster token",
            )
        if response.status == 404:
            raise NotFoundError(f"peer {address} does not hold {what}")
        raise UnreachableError(f"peer {address} answered {response.status} for {what}")

    def fetch(self, address: str, digest: Digest, writer: Sink) -> int:
        """Stream the entry ``digest`` from ``address`` into ``writer``; the bytes moved."""
        path = f"/v1/entries/{digest}"
        connection = self._connect(address)
        try:
            connection.putrequest("GET", path, skip_accept_encoding=True)
            connection.putheader(HEADER, self._signer.header("GET", path, str(digest)))
            connection.endheaders()
            response = connection.getresponse()
            self._check(response, address, str(digest))
            transfer = _Transfer(self.limits, self._clock)
            while chunk := response.read1(CHUNK_BYTES):  # what arrived: the rate is checked often
                writer.write(chunk)
                transfer.count(len(chunk), address)
            return transfer.moved
        except (OSError, http.client.HTTPException) as exc:
            raise UnreachableError(f"peer {address} broke off sending {digest}: {exc}") from exc
        finally:
            connection.close()

    def mirror(
        self,
        address: str,
        entry: Path,
        digest: Digest,
        size: int,
        *,
        write_behind: S3Url | None = None,
        task: str = "",
        generation: str = "",
    ) -> None:
        """Copy ``entry`` to ``address``'s cache; returns once it is verified there
        (and, with ``write_behind``, queued in that node's outbox)."""
        path = f"/v1/entries/{digest}"
        behind = str(write_behind) if write_behind else ""
        connection = self._connect(address)
        try:
            connection.putrequest("PUT", path, skip_accept_encoding=True)
            connection.putheader("Content-Length", str(size))
            subject = put_subject(str(digest), behind, task, generation)
            connection.putheader(HEADER, self._signer.header("PUT", path, subject))
            if behind:
                connection.putheader(WRITE_BEHIND_HEADER, behind)
                connection.putheader(TASK_HEADER, task)
            if generation:
                connection.putheader(GENERATION_HEADER, generation)
            connection.endheaders()
            assert connection.sock is not None
            with entry.open("rb") as handle:
                self._send(connection.sock, handle, size, address)
            response = connection.getresponse()
            response.read(4096)  # the short JSON answer, so the connection ends cleanly
            if response.status == 422:
                raise UnreachableError(f"peer {address} received {digest} damaged")
            self._check(response, address, str(digest))
        except (OSError, http.client.HTTPException) as exc:
            raise UnreachableError(f"peer {address} broke off receiving {digest}: {exc}") from exc
        finally:
            connection.close()

    def _send(self, sock: socket.socket, handle: BinaryIO, size: int, address: str) -> None:
        transfer = _Transfer(self.limits, self._clock)
        while transfer.moved < size:
            sent = sock.sendfile(
                handle, transfer.moved, min(size - transfer.moved, 64 * CHUNK_BYTES)
            )
            if sent == 0:
                raise UnreachableError(f"the entry for {address} ended early (it changed?)")
            transfer.count(sent, address)

    def status(self, address: str) -> ServiceStatus:
        connection = self._connect(address)
        try:
            connection.putrequest("GET", "/v1/status", skip_accept_encoding=True)
            connection.putheader(HEADER, self._signer.header("GET", "/v1/status"))
            connection.endheaders()
            response = connection.getresponse()
            self._check(response, address, "its status")
            body = json.loads(response.read(65536))
            return ServiceStatus(**{k: int(body[k]) for k in ServiceStatus.__dataclass_fields__})
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            raise UnreachableError(f"peer {address} gave no status: {exc}") from exc
        finally:
            connection.close()


def first_that_works(
    client: PeerClient, addresses: Sequence[str], attempt: Callable[[str], object]
) -> str | None:
    """Try ``attempt`` on each usable address in turn; the one that worked, or None.

    A peer that fails is marked bad (and avoided); one that no longer holds
    the entry (evicted since it told the dispatcher) is just passed over.
    """
    for address in client.usable(addresses):
        try:
            attempt(address)
            return address
        except NotFoundError:
            continue
        except StagerError:
            client.mark_bad(address)
    return None
