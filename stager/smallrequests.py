"""Small objects in one request each, sent from the calling thread.

The native client (:mod:`stager.crt`) runs each request on its event-loop
threads and calls back into Python for the headers, every body chunk and
the end. For an object of a few KiB those hand-offs and the request's
set-up cost more CPU than its bytes: about twice the client CPU of one
request sent from the calling thread (docs/benchmarks.md). A worker makes
two such requests per short task.

Here a request is built and signed as the native client's would be (the
same headers, awscrt's SigV4 signer over the same credentials provider),
then sent with :mod:`stager.http1` over a keep-alive connection that the
calling thread owns (one per host). Retries are bounded (``max_attempts``
in all): a connection that failed or was closed by the server, a 5xx, a
throttle. A kept-alive connection that fails is replaced at once, without
counting an attempt (servers close idle ones; the new one counts). An
untrusted certificate is not retried. Any other answer is final and
translated by :func:`stager.s3errors.translate_response`. An error of the
caller's sink (a full disk) comes out unchanged, and the connection, its
answer unread, is closed. A GET whose body has begun to
reach its sink is not retried (the sink cannot take bytes back); the
caller's digest check sees what arrived.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable

from awscrt.auth import (
    AwsCredentialsProvider,
    AwsSignatureType,
    AwsSignedBodyHeaderType,
    AwsSignedBodyValue,
    AwsSigningAlgorithm,
    AwsSigningConfig,
    aws_sign_request,
)
from awscrt.http import HttpRequest

from stager.errors import UnreachableError
from stager.http1 import Answer, ThreadConnections, split_host
from stager.s3errors import tls_failure, translate_crt, translate_response

RETRIED_STATUSES = frozenset({500, 502, 503, 504})


class _Sink:
    """The caller's sink, noting whether it got bytes and what it raised."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        self.began = False
        self.failed: BaseException | None = None

    def __call__(self, chunk: bytes) -> None:
        self.began = True
        try:
            self._sink(chunk)
        except BaseException as exc:
            self.failed = exc
            raise


class SmallRequests:
    """Requests sent from the calling thread. Thread-safe: each thread has its own
    connections."""

    def __init__(
        self,
        credentials: AwsCredentialsProvider,
        *,
        region: str,
        secure: bool,
        ca_file: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_attempts: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._signing = AwsSigningConfig(
            algorithm=AwsSigningAlgorithm.V4,
            signature_type=AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=credentials,
            region=region,
            service="s3",
            signed_body_value=AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            signed_body_header_type=AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
        )
        self._secure = secure
        self._connections = ThreadConnections(  # this thread's, one per host
            tls=ssl.create_default_context(cafile=ca_file) if secure else None,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        self._max_attempts = max(1, max_attempts)
        self._sleep = sleep

    def send(
        self,
        request: HttpRequest,
        body: bytes = b"",
        *,
        where: str,
        action: str,
        sink: Callable[[bytes], object] | None = None,
    ) -> Answer:
        """Sign and send ``request`` (its ``Host`` header names the host) with ``body``.

        A 2xx answer is returned; a GET's body goes to ``sink`` if given, else into
        the answer. Any other answer, or the last failure to get one, raises a
        :class:`StagerError` about ``action`` on ``where``.
        """
        headers = self._signed(request, where, action)
        address = split_host(headers.get("Host", ""), secure=self._secure)
        into = _Sink(sink) if sink is not None else None  # once it began, no retry
        attempt = 0
        while True:
            attempt += 1
            kept = self._connections.holds(address)  # the server may close it any time
            try:
                method, path = request.method or "GET", request.path or "/"
                answer = self._exchange(address, method, path, headers, body, into)
            except BaseException as exc:  # the connection is closed and not used again
                delivered = into is not None and into.began
                if (into is not None and exc is into.failed) or not isinstance(exc, OSError):
                    raise  # our own sink's (a full disk), or not the connection's: unchanged
                if isinstance(exc, ssl.SSLCertVerificationError):  # not transient
                    raise tls_failure(where, action, exc.__class__.__name__) from exc
                if kept and not delivered:  # an idle connection the server dropped: no attempt
                    attempt -= 1
                    continue
                if delivered or attempt >= self._max_attempts:
                    if isinstance(exc, ssl.SSLError):
                        raise tls_failure(where, action, exc.__class__.__name__) from exc
                    raise UnreachableError(
                        f"cannot {action} {where}: the S3 endpoint did not answer"
                        f" ({exc.__class__.__name__})"
                    ) from exc
            else:
                if 200 <= answer.status < 300:
                    return answer
                error = translate_response(
                    answer.status, answer.headers, answer.body, where, action
                )
                if answer.status not in RETRIED_STATUSES or attempt >= self._max_attempts:
                    raise error
            self._sleep(min(1.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))

    def _signed(self, request: HttpRequest, where: str, action: str) -> dict[str, str]:
        try:
            signed = aws_sign_request(request, self._signing).result()
        except Exception as exc:  # the keys could not be had
            raise translate_crt(exc, where, action) from exc
        return dict(signed.headers)

    def _exchange(
        self,
        address: tuple[str, int],
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        sink: Callable[[bytes], None] | None,
    ) -> Answer:
        if body and not any(name.lower() == "content-length" for name in headers):
            headers = {**headers, "Content-Length": str(len(body))}
        return self._connections.exchange(address, method, path, headers, body, sink)
