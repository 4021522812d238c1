"""One HTTP/1.1 exchange at a time (stager.http1), against a server that answers with
scripted bytes: lengths and chunks, kept-alive and closed connections, broken answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from stager.http1 import BrokenAnswer, Connection, CutShort, ThreadConnections, split_host


class RawServer:
    """Answers each request with the next scripted bytes; None closes the connection
    instead (at once, if it follows an answer), and the next one is accepted."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # the test is over
                return
            with connection:
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        pending = b""
        while self.answers:
            while b"\r\n\r\n" not in pending:
                if not (data := connection.recv(65536)):
                    return  # the client closed it
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(pending) < length:
                pending += connection.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + pending[:length])
            pending = pending[length:]
            answer = self.answers.pop(0)
            if answer is None:
                return
            connection.sendall(answer)
            if self.answers and self.answers[0] is None:
                self.answers.pop(0)
                return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[list[RawServer]]:
    started: list[RawServer] = []
    yield started
    for server in started:
        server.close()


def connect(serve: list[RawServer], *answers: bytes | None) -> tuple[Connection, RawServer]:
    server = RawServer(list(answers))
    serve.append(server)
    connection = Connection(
        "127.0.0.1", server.port, tls=None, connect_timeout_s=5, read_timeout_s=5
    )
    return connection, server


def test_a_request_goes_out_whole_and_answers_by_length_and_by_chunks_are_read(
    serve: list[RawServer],
) -> None:
    connection, server = connect(
        serve,
        b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e1"\r\n\r\nhello',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Amz-Meta-A: 1\r\n"
        b"x-amz-meta-a: 2\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n",
    )
    first = connection.exchange("PUT", "/b/k%20x", {"Host": "h", "Content-Length": "4"}, b"data")
    assert (first.status, first.body, first.headers["etag"], first.keep_alive) == (
        200,
        b"hello",
        '"e1"',
        True,
    )
    sent = b"PUT /b/k%20x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\ndata"
    assert server.requests[0] == sent
    pieces: list[bytes] = []
    second = connection.exchange("GET", "/b/k", {"Host": "h"}, sink=pieces.append)
    assert b"".join(pieces) == b"abcdefg" and second.body == b""
    assert second.headers["x-amz-meta-a"] == "1, 2"  # a repeated header, joined
    connection.close()


def test_an_error_answer_keeps_its_body_and_a_closing_server_is_noticed(
    serve: list[RawServer],
) -> None:
    connection, _ = connect(
        serve,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n<Error/>\n",
    )
    pieces: list[bytes] = []
    answer = connection.exchange("GET", "/b/gone", {"Host": "h"}, sink=pieces.append)
    assert (answer.status, answer.body, answer.keep_alive) == (404, b"<Error/>\n", False)
    assert pieces == []  # only a 2xx answer's body is the object's


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (None, CutShort),  # closed with no answer
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", CutShort),  # then closed
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", CutShort),
        (b"SMTP ready\r\n\r\n", BrokenAnswer),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", BrokenAnswer),
    ],
    ids=["no-answer", "short-body", "short-chunk", "not-http", "bad-length"],
)
def test_a_broken_or_cut_answer_is_a_connection_error(
    serve: list[RawServer], answer: bytes | None, error: type[OSError]
) -> None:
    connection, _ = connect(serve, answer, None)
    with pytest.raises(error) as caught:
        connection.exchange("GET", "/b/k", {"Host": "h"})
    assert isinstance(caught.value, OSError)  # retried as any failure of the connection


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    serve: list[RawServer],
) -> None:
    kept, _ = connect(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"")
    closing, _ = connect(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", None)
    for connection in (kept, closing):
        assert connection.exchange("POST", "/v1/lease", {"Host": "h"}).keep_alive
    deadline = time.monotonic() + 5
    while closing.reusable() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kept.reusable() and not closing.reusable()


def test_a_thread_replaces_a_connection_the_server_closed_and_loses_no_request(
    serve: list[RawServer],
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server = RawServer([ok, None, ok])  # answers, closes that connection, answers on the next
    serve.append(server)
    connections = ThreadConnections(tls=None, connect_timeout_s=5, read_timeout_s=5)
    address = ("127.0.0.1", server.port)
    assert connections.exchange(address, "POST", "/first", {"Host": "h"}).body == b"ok"
    time.sleep(0.2)  # the server's close reaches this side
    assert connections.holds(address)
    assert connections.exchange(address, "POST", "/second", {"Host": "h"}).body == b"ok"
    assert [r.split(b" ")[1] for r in server.requests] == [b"/first", b"/second"]  # once each


def test_host_headers_split_into_name_and_port() -> None:
    assert split_host("127.0.0.1:9000", secure=False) == ("127.0.0.1", 9000)
    assert split_host("s3.example.com", secure=True) == ("s3.example.com", 443)
    assert split_host("s3.example.com", secure=False) == ("s3.example.com", 80)
    assert split_host("[::1]:8333", secure=False) == ("::1", 8333)
    assert split_host("[2001:db8::5]", secure=True) == ("2001:db8::5", 443)
