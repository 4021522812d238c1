"""Small requests from the calling thread (stager.smallrequests): signing, keep-alive,
bounded retries, and what is never retried, against a scripted HTTP server."""

from __future__ import annotations

import errno
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from awscrt.auth import AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest

from stager.errors import NotFoundError, PreconditionFailedError, StagerError, UnreachableError
from stager.smallrequests import SmallRequests

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


@dataclass
class Script:
    """What the server answers, request by request: (status, body) or "cut" (the
    connection closed with no answer) or "half" (headers, then half the body)."""

    answers: list[tuple[int, bytes] | str]
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            script.seen.append((self.command, self.path, dict(self.headers), body))
            script.connections.add(self.client_address)
            answer = script.answers.pop(0)
            if answer == "cut":
                self.close_connection = True
                return
            if answer == "half":
                self.send_response(200)
                self.send_header("Content-Length", "10")
                self.end_headers()
                self.wfile.write(b"12345")
                self.close_connection = True
                return
            assert isinstance(answer, tuple)
            status, payload = answer
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("ETag", '"e"')
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = _answer

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def requests(attempts: int = 3) -> SmallRequests:
    return SmallRequests(
        AwsCredentialsProvider.new_static("AKIDEXAMPLE", SECRET),
        region="us-east-1",
        secure=False,
        ca_file=None,
        connect_timeout_s=5,
        read_timeout_s=5,
        max_attempts=attempts,
        sleep=lambda _: None,
    )


def request(host: str, method: str = "GET", path: str = "/b/k") -> HttpRequest:
    return HttpRequest(method, path, HttpHeaders([("Host", host)]))


def error_xml(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()


def test_requests_are_signed_and_share_one_connection(server: tuple[str, Script]) -> None:
    host, script = server
    script.answers = [(200, b"hello"), (200, b"")]
    small = requests()
    got = small.send(request(host), where="s3://b/k", action="download")
    assert (got.status, got.body, got.headers["etag"]) == (200, b"hello", '"e"')
    small.send(request(host, "PUT"), b"data", where="s3://b/k", action="write")
    (_, _, headers, _), (method, _, _, body) = script.seen
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" and "X-Amz-Date" in headers
    assert (method, body) == ("PUT", b"data")
    assert len(script.connections) == 1  # kept alive


def test_a_server_error_or_a_cut_connection_is_retried_within_the_bound(
    server: tuple[str, Script],
) -> None:
    host, script = server
    script.answers = [(503, error_xml("SlowDown")), "cut", (200, b"at last")]
    got = requests(attempts=3).send(request(host), where="s3://b/k", action="download")
    assert got.body == b"at last" and len(script.seen) == 3

    script.answers = [(500, error_xml("InternalError"))] * 2
    with pytest.raises(UnreachableError, match="cannot download s3://b/k: the server failed"):
        requests(attempts=2).send(request(host), where="s3://b/k", action="download")
    assert len(script.seen) == 5 and not script.answers


def test_a_final_answer_is_not_retried_and_names_no_secret(server: tuple[str, Script]) -> None:
    host, script = server
    script.answers = [(404, error_xml("NoSuchKey")), (412, error_xml("PreconditionFailed"))]
    small = requests()
    with pytest.raises(NotFoundError, match="no such object") as missing:
        small.send(request(host), where="s3://b/k", action="download")
    with pytest.raises(PreconditionFailedError, match="already exists") as taken:
        small.send(request(host, "PUT"), b"x", where="s3://b/k", action="write")
    assert len(script.seen) == 2
    for caught in (missing, taken):
        assert SECRET not in str(caught.value) and "Signature" not in str(caught.value)


def test_a_get_cut_after_its_body_began_is_not_retried(server: tuple[str, Script]) -> None:
    host, script = server
    script.answers = ["half", (200, b"0123456789")]
    arrived: list[bytes] = []
    with pytest.raises(UnreachableError, match="did not answer"):
        requests().send(request(host), where="s3://b/k", action="download", sink=arrived.append)
    assert len(script.seen) == 1  # the sink holds bytes already: no second attempt

    script.answers = ["half", (200, b"0123456789")]  # read whole, nothing handed on: again
    got = requests().send(request(host), where="s3://b/k", action="download")
    assert got.body == b"0123456789" and len(script.seen) == 3


def test_a_forked_child_opens_its_own_connection(server: tuple[str, Script]) -> None:
    host, script = server
    script.answers = [(200, b"parent"), (200, b"child"), (200, b"parent again")]
    small = requests()
    assert small.send(request(host), where="s3://b/k", action="download").body == b"parent"
    child = os.fork()
    if child == 0:  # the parent's socket is not the child's to use
        got = small.send(request(host), where="s3://b/k", action="download")
        os._exit(0 if got.body == b"child" else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    again = small.send(request(host), where="s3://b/k", action="download")
    assert again.body == b"parent again"
    assert len(script.connections) == 2  # the parent's, kept alive, and the child's


def test_an_idle_connection_the_server_closed_costs_no_attempt(
    server: tuple[str, Script],
) -> None:
    host, script = server
    script.answers = [(200, b"first"), "cut", (200, b"second")]
    small = requests(attempts=1)  # no retries asked for
    assert small.send(request(host), where="s3://b/k", action="download").body == b"first"
    again = small.send(request(host), where="s3://b/k", action="download")
    assert again.body == b"second" and len(script.connections) == 2

    script.answers = ["cut", "cut"]  # a new connection that fails counts: the bound holds
    with pytest.raises(UnreachableError, match="did not answer"):
        small.send(request(host), where="s3://b/k", action="download")
    assert len(script.seen) == 5 and not script.answers


def test_a_full_disk_under_the_sink_is_raised_as_it_is_and_not_retried(
    server: tuple[str, Script],
) -> None:
    host, script = server
    script.answers = [(200, b"x" * 1000), (200, b"next")]

    def full(_: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    small = requests()
    with pytest.raises(OSError) as caught:
        small.send(request(host), where="s3://b/k", action="download", sink=full)
    assert caught.value.errno == errno.ENOSPC and not isinstance(caught.value, StagerError)
    assert len(script.seen) == 1  # not retried
    got = small.send(request(host), where="s3://b/k2", action="download")
    assert got.body == b"next"  # on a new connection: the old one's answer was never read
    assert len(script.connections) == 2
