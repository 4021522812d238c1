"""One HTTP/1.1 request and its answer at a time, over a connection kept alive.

For small requests whose cost is the client's own CPU (a GET or PUT of a
few KiB): the request goes out in one ``sendall``, its head and body
together, and the answer is parsed by httptools (llhttp, Node.js's parser,
in C), which knows HTTP/1.1's framing (a length, chunks, keep-alive) so
that this module does not have to. A 1 KiB PUT costs the client about half
the CPU it costs through :mod:`http.client`, whose answers go through the
``email`` package (docs/benchmarks.md).

A connection belongs to one thread; :class:`ThreadConnections` keeps each
thread's, one per address. Whatever goes wrong on the wire comes
out as an ``OSError``: the socket's own (a timeout, a reset, TLS),
:class:`BrokenAnswer` for an answer that breaks HTTP's rules, or
:class:`CutShort` for a connection closed before its answer was whole.
After any error the connection's state is unknown: close it.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httptools

READ_BYTES = 256 * 1024  # a GET's body reaches its sink in pieces of at most this size


class BrokenAnswer(ConnectionError):
    """The server's answer is not HTTP/1.1."""


class CutShort(ConnectionError):
    """The connection closed before the answer was whole."""


@dataclass(frozen=True)
class Answer:
    """An answer: its status, headers (names lower-cased; a repeated one's values joined
    by ", "), body (empty if a sink took it) and whether the connection stays open."""

    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Reading:
    """What the parser found so far (httptools calls these back)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.head_done = False
        self.done = False
        self.keep_alive = False  # known once the answer is whole (llhttp forgets it then)

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()


def split_host(host: str, *, secure: bool) -> tuple[str, int]:
    """``host[:port]`` (a ``Host`` header; an IPv6 address in brackets) as a name and a
    port, the scheme's own if none is given."""
    default = 443 if secure else 80
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") else default
    name, colon, port = host.partition(":")
    return name, int(port) if colon else default


class Connection:
    """A kept-alive HTTP/1.1 connection to ``host:port`` (over TLS with ``tls``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(read_timeout_s)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        sink: Callable[[bytes], object] | None = None,
        *,
        read_timeout_s: float | None = None,
    ) -> Answer:
        """Send one request and read its whole answer.

        A 2xx answer's body goes to ``sink``, if given, as it arrives; any other's
        into the answer. An exception of the sink comes out unchanged.
        ``read_timeout_s`` replaces the connection's own from this request on.
        """
        if method == "HEAD":  # its answer may announce a body that never comes
            raise ValueError("HEAD is not supported")
        if read_timeout_s is not None:
            self._sock.settimeout(read_timeout_s)
        lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers.items())]
        self._sock.sendall("\r\n".join([*lines, "", ""]).encode("latin-1") + body)
        reading = _Reading()
        parser = reading.parser
        to_sink = False
        while not reading.done:
            data = self._sock.recv(READ_BYTES)
            if not data:
                raise CutShort("the server closed the connection before its answer was whole")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise BrokenAnswer(f"the server's answer is not HTTP/1.1 ({exc})") from exc
            if sink is not None and reading.head_done:
                to_sink = 200 <= parser.get_status_code() < 300
                if to_sink:
                    for chunk in reading.chunks:
                        sink(chunk)
                    reading.chunks.clear()
        return Answer(
            parser.get_status_code(),
            reading.headers,
            b"" if to_sink else b"".join(reading.chunks),
            reading.keep_alive,
        )

    def reusable(self) -> bool:
        """Whether this kept-alive connection may carry another request: the server
        has neither closed it nor sent anything unasked (then there is something to
        read)."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        try:
            return not poller.poll(0)
        except OSError:
            return False

    def close(self) -> None:
        self._sock.close()


Address = tuple[str, int]


class ThreadConnections:
    """Each thread's kept-alive connections, one per address. A forked child starts
    with none: the sockets it inherited are its parent's."""

    def __init__(
        self, *, tls: ssl.SSLContext | None, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self._tls = tls
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._mine = threading.local()

    def _held(self) -> dict[Address, Connection]:
        mine = self._mine
        if getattr(mine, "pid", None) != os.getpid():
            mine.pid, mine.connections = os.getpid(), {}
        held: dict[Address, Connection] = mine.connections
        return held

    def holds(self, address: Address) -> bool:
        """Whether this thread has a connection to ``address`` from an earlier request."""
        return address in self._held()

    def exchange(
        self,
        address: Address,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        sink: Callable[[bytes], object] | None = None,
        *,
        read_timeout_s: float | None = None,
    ) -> Answer:
        """:meth:`Connection.exchange` on this thread's connection to ``address``: a new
        one if it has none, or if the server closed the one it had while it was idle
        (seen before the request goes out, so the request is not lost). A connection
        that failed, or that the server closes after its answer, is not used again."""
        held = self._held()
        connection = held.get(address)
        if connection is not None and not connection.reusable():
            self.drop(address)
            connection = None
        if connection is None:
            connection = held[address] = Connection(
                *address,
                tls=self._tls,
                connect_timeout_s=self._connect_timeout_s,
                read_timeout_s=self._read_timeout_s,
            )
        try:
            answer = connection.exchange(
                method, target, headers, body, sink, read_timeout_s=read_timeout_s
            )
        except BaseException:
            self.drop(address)  # its answer unread or broken: its state is unknown
            raise
        if not answer.keep_alive:
            self.drop(address)
        return answer

    def drop(self, address: Address) -> None:
        """Close this thread's connection to ``address``, if it has one."""
        connection = self._held().pop(address, None)
        if connection is not None:
            connection.close()
