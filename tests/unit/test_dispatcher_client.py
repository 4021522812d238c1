"""The dispatcher's client on the wire: what it sends, and the URLs it refuses."""

from __future__ import annotations

import pytest

from stager.errors import ConfigError, UnreachableError
from tests.unit.test_http1 import RawServer
from worker_hooks.dispatch.client import DispatcherClient
from worker_hooks.task.protocol import PROTOCOL_VERSION, VERSION_HEADER

BODY = b'{"results": []}'
ANSWER = (
    f"HTTP/1.1 200 OK\r\n{VERSION_HEADER}: {PROTOCOL_VERSION}\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n"
).encode() + BODY


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1:80", "http://", "http://127.0.0.1:port", "127.0.0.1:8080"]
)
def test_a_url_that_is_not_http_host_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="is not http"):
        DispatcherClient(url, "a-token")


def test_requests_carry_the_token_and_a_host_without_credentials() -> None:
    server = RawServer([ANSWER, ANSWER])
    try:
        client = DispatcherClient(f"http://user:pw@127.0.0.1:{server.port}/base/", "tok-123")
        assert client.recorded(["k1"]) == {} and client.recorded(["k2"]) == {}
    finally:
        server.close()
    first, second = (request.decode() for request in server.requests)
    assert first.startswith("POST /base/v1/memo HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first and "pw" not in first
    assert "Authorization: Bearer tok-123\r\n" in first and '"k2"' in second  # kept alive


def test_a_dead_dispatcher_is_one_line_naming_it_without_secrets() -> None:
    server = RawServer([None])  # closes without an answer
    try:
        client = DispatcherClient(f"http://user:pw@127.0.0.1:{server.port}", "tok-123")
        with pytest.raises(UnreachableError, match="is unreachable") as caught:
            client.recorded(["k"])
    finally:
        server.close()
    said = caught.value.one_line()
    assert f"http://127.0.0.1:{server.port}" in said
    assert "tok-123" not in said and "pw" not in said
