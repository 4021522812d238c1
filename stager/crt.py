"""Bulk bytes through the native S3 client (awscrt).

awscrt is the engine behind s3transfer's CRT path. Its S3 client builds,
signs, retries and pools requests in C, and splits large objects into
parallel ranged GETs or multipart uploads itself. A transfer of thousands
of small objects therefore does not pay botocore's Python cost per request
(about 1-2 ms of CPU per object), and a large download no longer funnels
through one Python IO thread.

Here: GET and PUT of whole objects (conditional writes included), HEAD of
objects and buckets, and listings, so a command that moves bytes needs no
botocore. Multipart uploads left behind and bucket creation stay on
botocore, in :mod:`stager.objectstore`, which decides when this client is used.

Small objects (a lone GET, a GET or PUT under :data:`SMALL_REQUEST_BYTES`) skip
the native client's threads: :mod:`stager.smallrequests` signs them the
same way and sends them from the calling thread, which costs half the CPU.

Body chunks of a GET arrive in order (the client guarantees it, and
:meth:`CrtTransfers.get` checks every offset), so the caller's sink can
hash them as they stream.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote_plus, urlencode, urlsplit
from xml.etree import ElementTree

from awscrt.auth import AwsCredentials, AwsCredentialsProvider
from awscrt.http import HttpHeaders, HttpRequest
from awscrt.io import (
    ClientBootstrap,
    ClientTlsContext,
    DefaultHostResolver,
    EventLoopGroup,
    TlsConnectionOptions,
    TlsContextOptions,
)
from awscrt.s3 import (
    S3Client,
    S3RequestTlsMode,
    S3RequestType,
    S3ResponseError,
    S3RetryConfig,
    S3RetryMode,
)

from stager.errors import AccessDeniedError, ConfigError, IntegrityError, StagerError
from stager.locations import S3Url
from stager.s3errors import translate_crt
from stager.settings import MiB, Settings
from stager.smallrequests import SmallRequests

# The smallest buffer pool the native client accepts; with it, a whole
# `stager cache fetch` of 1 GiB peaks near 200 MiB resident.
MEMORY_LIMIT_BYTES = 256 * MiB
SMALL_REQUEST_BYTES = 1 * MiB  # a PUT or known-size GET below this: from the calling thread
_WAIT_SLICE_S = 0.5  # how often a waiting thread wakes to notice Ctrl-C
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn")

Sink = Callable[[bytes], object]
ProgressCallback = Callable[[int], None]
FrozenKeys = tuple[str, str, str | None]  # access key, secret key, session token
Failure = StagerError | OSError  # one request's of a batch: its own, translated
T = TypeVar("T")


class CrtTransfers:
    """GET and PUT of whole objects on one endpoint. Thread-safe; one per process is plenty."""

    def __init__(
        self,
        settings: Settings,
        credentials: AwsCredentialsProvider,
        *,
        endpoint_url: str,
        region: str,
        ca_file: str | None = None,
    ) -> None:
        """The endpoint and region as the store resolved them (flags, variables, profile);
        ``credentials`` signs every request (see :func:`chain_provider`)."""
        self._region = region
        self._part_size = settings.part_size_bytes
        self._written = _write_headers(settings)  # on every object written
        self._paying = {"x-amz-request-payer": "requester"} if settings.requester_pays else {}
        endpoint = urlsplit(endpoint_url)
        # AWS's own endpoints (regional, FIPS, dual-stack, China) take virtual-host
        # addressing, the bucket's name before the endpoint's; any other, path-style.
        self._endpoint_host = endpoint.netloc
        self._virtual_hosts = (endpoint.hostname or "").endswith(AWS_DOMAINS)
        secure = endpoint.scheme == "https"
        retries = (
            S3RetryConfig(retry_mode=S3RetryMode.NONE)
            if settings.max_attempts == 1
            else S3RetryConfig(max_retries=settings.max_attempts - 1)
        )
        loops = EventLoopGroup()
        self._client = S3Client(
            bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
            region=self._region,
            credential_provider=credentials,
            tls_mode=S3RequestTlsMode.ENABLED if secure else S3RequestTlsMode.DISABLED,
            tls_connection_options=_trusting(ca_file) if secure and ca_file else None,
            part_size=settings.part_size_bytes,
            multipart_upload_threshold=settings.multipart_threshold_bytes,
            memory_limit=max(MEMORY_LIMIT_BYTES, 2 * settings.part_size_bytes),
            max_active_connections_override=settings.max_concurrency + settings.files_in_flight,
            retry_config=retries,
            connect_timeout_ms=int(settings.connect_timeout_s * 1000),
        )
        self._small = SmallRequests(
            credentials,
            region=self._region,
            secure=secure,
            ca_file=ca_file,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_attempts=settings.max_attempts,
        )

    def _request(
        self, method: str, url: S3Url, headers: Mapping[str, str], query: str = ""
    ) -> HttpRequest:
        """A request for the object ``url`` (for its bucket, if the key is empty)."""
        key = quote(url.key, safe="/~")
        if self._virtual_hosts and "." not in url.bucket:  # dotted names break TLS names
            host, path = f"{url.bucket}.{self._endpoint_host}", f"/{key}"
        else:
            host = self._endpoint_host
            path = f"/{url.bucket}/{key}" if key else f"/{url.bucket}"
        path += f"?{query}" if query else ""
        if method == "PUT":
            headers = {**headers, **self._written}
        every = [("Host", host), *headers.items(), *self._paying.items()]
        return HttpRequest(method, path, HttpHeaders(every))

    def get(
        self,
        url: S3Url,
        sink: Sink,
        on_bytes: ProgressCallback | None = None,
        *,
        size_hint: int | None = None,
    ) -> Headers:
        """Stream the object into ``sink`` in order; return the response headers.

        An object known to fit in one part is one plain GET (sent from this
        thread when under :data:`SMALL_REQUEST_BYTES`); otherwise the client
        splits it into ranged GETs. An empty object answers a ranged GET with
        416 on some servers: then it is fetched with a plain GET.
        """
        if size_hint is not None and size_hint < SMALL_REQUEST_BYTES:
            return self._get_small_into(url, sink, on_bytes)
        one_part = size_hint is not None and size_hint < self._part_size
        try:
            return self._get(url, sink, on_bytes, ranged=not one_part)
        except S3ResponseError as exc:
            if one_part or exc.status_code != 416:
                raise translate_crt(exc, str(url), "download") from exc
        return self._get(url, sink, on_bytes, ranged=False)

    def _get_small_into(self, url: S3Url, sink: Sink, on_bytes: ProgressCallback | None) -> Headers:
        def into(chunk: bytes) -> None:
            sink(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))

        request = self._request("GET", url, {})
        answer = self._small.send(request, where=str(url), action="download", sink=into)
        return Headers(answer.headers)

    def get_small(self, url: S3Url) -> tuple[bytes, Headers]:
        """A small object's bytes and headers, in one plain GET from this thread."""
        answer = self._small.send(self._request("GET", url, {}), where=str(url), action="download")
        return answer.body, Headers(answer.headers)

    def head(self, url: S3Url) -> Headers | None:
        """The object's headers (with an empty key: the bucket's), ``None`` if the server
        answers 404."""
        received: dict[str, str] = {}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            received.update((name.lower(), value) for name, value in headers)

        request = self._client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name="HeadObject" if url.key else "HeadBucket",
            request=self._request("HEAD", url, {"Content-Length": "0"}),
            on_headers=on_headers,
        )
        try:
            _wait(request, url, "read", keep=(S3ResponseError,))
        except S3ResponseError as exc:
            if exc.status_code == 404:
                return None
            raise translate_crt(exc, str(url), "read") from exc
        return Headers(received)

    def list(self, prefix: S3Url) -> Iterator[tuple[str, int, str | None]]:
        """(key, size, ETag) of every object whose key starts with ``prefix.key`` (ListObjectsV2,
        page after page)."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix.key, "encoding-type": "url"}
            if token is not None:
                query["continuation-token"] = token
            body = self._bucket_get(prefix, "ListObjectsV2", query, "list")
            items, token = parse_listing(body, str(prefix))
            yield from items
            if token is None:
                return

    def get_many(
        self, gets: Sequence[tuple[S3Url, Sink]], *, in_flight: int
    ) -> Sequence[Headers | Failure]:
        """Plain GETs of small objects, up to ``in_flight`` at once, all started from this
        thread: no thread waits on any one object. Each object's headers, or its error.

        The sinks run on the client's own threads, each object's chunks in order;
        a lone object's, on this thread (:mod:`stager.smallrequests`).
        """
        if len(gets) == 1:
            url, sink = gets[0]
            try:
                return [self._get_small_into(url, sink, None)]
            except (StagerError, OSError) as exc:
                return [exc]

        def start(n: int) -> tuple[Any, dict[str, str]]:
            return self._start_get(gets[n][0], gets[n][1], None, ranged=False)

        def finish(n: int, request: Any, received: dict[str, str]) -> Headers | Failure:
            return _outcome(request, gets[n][0], "download", received)

        return _windowed(len(gets), start, finish, in_flight)

    def put_many(
        self, puts: Sequence[tuple[Path, S3Url, int, Mapping[str, str]]], *, in_flight: int
    ) -> Sequence[Failure | None]:
        """One PUT of each small file (path, url, size, user metadata), up to
        ``in_flight`` at once, all started from this thread; each one's error, or None."""

        def start(n: int) -> tuple[Any, dict[str, str]]:
            path, url, size, metadata = puts[n]
            request = self._client.make_request(
                type=S3RequestType.PUT_OBJECT,
                request=self._request("PUT", url, _put_headers(size, metadata, None)),
                send_filepath=str(path),
            )
            return request, {}

        def finish(n: int, request: Any, _: dict[str, str]) -> Failure | None:
            outcome = _outcome(request, puts[n][1], "upload to", {})
            return None if isinstance(outcome, Headers) else outcome

        return _windowed(len(puts), start, finish, in_flight)

    def _get(
        self, url: S3Url, sink: Sink, on_bytes: ProgressCallback | None, *, ranged: bool
    ) -> Headers:
        request, received = self._start_get(url, sink, on_bytes, ranged=ranged)
        _wait(request, url, "download", keep=(S3ResponseError,) if ranged else ())
        return Headers(received)

    def _start_get(
        self, url: S3Url, sink: Sink, on_bytes: ProgressCallback | None, *, ranged: bool
    ) -> tuple[Any, dict[str, str]]:
        """A GET under way, and the headers it fills in as they arrive."""
        received: dict[str, str] = {}
        expected_offset = 0

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            received.update((name.lower(), value) for name, value in headers)

        def on_body(chunk: bytes, offset: int, **_: Any) -> None:
            nonlocal expected_offset
            if offset != expected_offset:
                raise IntegrityError(
                    f"{url}: bytes arrived out of order (offset {offset}, expected"
                    f" {expected_offset})"
                )
            sink(chunk)
            expected_offset += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))

        request = self._client.make_request(
            type=S3RequestType.GET_OBJECT if ranged else S3RequestType.DEFAULT,
            operation_name=None if ranged else "GetObject",
            request=self._request("GET", url, {"Content-Length": "0"}),
            on_headers=on_headers,
            on_body=on_body,
        )
        return request, received

    def _bucket_get(
        self, where: S3Url, operation: str, query: Mapping[str, str], action: str
    ) -> bytes:
        """The body of a GET on ``where``'s bucket with ``query`` (a listing, say)."""
        body = bytearray()
        request = self._client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name=operation,
            request=self._request(
                "GET",
                S3Url(where.bucket, ""),
                {"Content-Length": "0"},
                urlencode(sorted(query.items()), quote_via=quote),
            ),
            on_body=lambda chunk, **_: body.extend(chunk),
        )
        _wait(request, where, action)
        return bytes(body)

    def put_file(
        self,
        path: Path,
        url: S3Url,
        *,
        size: int,
        metadata: Mapping[str, str],
        on_bytes: ProgressCallback | None = None,
        conditions: Mapping[str, str] | None = None,
    ) -> None:
        """Upload ``path`` (``size`` bytes) with user ``metadata``; multipart when large.

        ``conditions`` (``If-None-Match``, ``If-Match``) make the write conditional;
        a multipart upload carries them on its completion."""

        if size < SMALL_REQUEST_BYTES:
            data = path.read_bytes()
            if len(data) != size:
                raise IntegrityError(f"{path} holds {len(data)} bytes, not the {size} expected")
            headers = _put_headers(size, metadata, conditions)
            self._small.send(
                self._request("PUT", url, headers), data, where=str(url), action="upload to"
            )
            if on_bytes is not None:
                on_bytes(size)
            return

        def on_progress(progress: int) -> None:
            if on_bytes is not None:
                on_bytes(progress)

        request = self._client.make_request(
            type=S3RequestType.PUT_OBJECT,
            request=self._request("PUT", url, _put_headers(size, metadata, conditions)),
            send_filepath=str(path),
            on_progress=on_progress,
        )
        _wait(request, url, "upload to")

    def put_small(
        self,
        url: S3Url,
        data: bytes,
        *,
        metadata: Mapping[str, str],
        conditions: Mapping[str, str] | None = None,
    ) -> None:
        """Store ``data`` in one PUT from this thread, under ``conditions`` as
        :meth:`put_file`'s."""
        headers = _put_headers(len(data), metadata, conditions)
        self._small.send(self._request("PUT", url, headers), data, where=str(url), action="write")


def _write_headers(settings: Settings) -> dict[str, str]:
    """Storage class and server-side encryption, as S3's headers."""
    headers = {
        "x-amz-storage-class": settings.storage_class,
        "x-amz-server-side-encryption": settings.sse.value if settings.sse else None,
        "x-amz-server-side-encryption-aws-kms-key-id": settings.sse_kms_key_id,
    }
    return {name: value for name, value in headers.items() if value is not None}


def _put_headers(
    size: int, metadata: Mapping[str, str], conditions: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
        **{f"x-amz-meta-{name}": value for name, value in metadata.items()},
        **(conditions or {}),
    }


_S3_XML = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def parse_listing(body: bytes, where: str) -> tuple[list[tuple[str, int, str | None]], str | None]:
    """A ListObjectsV2 page: its (key, size, ETag) items and the token of the next page, if
    the listing goes on. Keys come form-encoded (``encoding-type=url``: a blank is "+")."""
    try:
        root = ElementTree.fromstring(body)
        items = [
            (
                unquote_plus(item.findtext(f"{_S3_XML}Key", "")),
                int(item.findtext(f"{_S3_XML}Size", "")),
                item.findtext(f"{_S3_XML}ETag"),
            )
            for item in root.iter(f"{_S3_XML}Contents")
        ]
    except (ElementTree.ParseError, ValueError) as exc:
        raise StagerError(f"cannot list {where}: the listing is not S3's ({exc})") from exc
    going_on = root.findtext(f"{_S3_XML}IsTruncated", "false") == "true"
    token = root.findtext(f"{_S3_XML}NextContinuationToken") if going_on else None
    if going_on and not token:
        raise StagerError(f"cannot list {where}: a truncated page names no next one")
    return items, token


def chain_provider(profile: str | None) -> AwsCredentialsProvider:
    """Credentials from the standard chain, resolved by the native client: environment,
    profile files (credential_process, role_arn), web identity, ECS, instance metadata;
    refreshed before they expire. A named ``profile`` is read instead of the environment
    (as botocore does)."""
    if profile:
        return AwsCredentialsProvider.new_profile(profile_name=profile)
    return AwsCredentialsProvider.new_default_chain()


def static_provider(access_key: str, secret_key: str) -> AwsCredentialsProvider:
    return AwsCredentialsProvider.new_static(access_key, secret_key)


def found_credentials(provider: AwsCredentialsProvider, *, timeout_s: float = 10.0) -> bool:
    """Whether ``provider`` yields credentials now (asked once, here, so that a missing
    key is said plainly rather than as a signing failure)."""
    try:
        provider.get_credentials().result(timeout=timeout_s)
    except Exception:
        return False
    return True


def delegate_provider(keys: Callable[[], FrozenKeys | None]) -> AwsCredentialsProvider:
    """Credentials asked of ``keys`` at each signing (so refreshed keys are used).

    The closure must not reach back to the client: the native side holds it,
    and a cycle through native code is never collected (the client's threads
    would outlive it).
    """

    def credentials() -> AwsCredentials:
        frozen = keys()
        if frozen is None:
            raise AccessDeniedError("no AWS credentials were found")
        return AwsCredentials(*frozen)

    return AwsCredentialsProvider.new_delegate(credentials)


def _trusting(ca_file: str) -> TlsConnectionOptions:
    """TLS that trusts the certificates in ``ca_file`` (as botocore's ``verify`` does)."""
    if not Path(ca_file).is_file():
        raise ConfigError(
            f"CA bundle {ca_file} is not a readable file",
            hint="fix the ca_bundle setting or AWS_CA_BUNDLE",
        )
    options = TlsContextOptions()
    options.override_default_trust_store_from_path(ca_filepath=ca_file)
    return ClientTlsContext(options).new_connection_options()


class Headers(dict[str, str]):
    """Response headers, names lower-cased."""

    def object_size(self) -> int:
        total = self.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else int(self.get("content-length", "0"))


def _windowed(
    count: int,
    start: Callable[[int], tuple[Any, dict[str, str]]],
    finish: Callable[[int, Any, dict[str, str]], T],
    in_flight: int,
) -> list[T]:
    """Start requests ``0..count-1`` (``start`` returns each with the headers it fills),
    at most ``in_flight`` unfinished at once, then ``finish`` each. Interrupted, every
    request started is cancelled."""
    window = threading.BoundedSemaphore(max(1, in_flight))
    started: list[tuple[Any, dict[str, str]]] = []
    try:
        for n in range(count):
            while not window.acquire(timeout=_WAIT_SLICE_S):  # wakes for Ctrl-C
                pass
            request, received = start(n)
            request.finished_future.add_done_callback(lambda _: window.release())
            started.append((request, received))
        return [finish(n, request, received) for n, (request, received) in enumerate(started)]
    except BaseException:
        for request, _ in started:
            request.cancel()
        raise


def _outcome(request: Any, url: S3Url, action: str, received: dict[str, str]) -> Headers | Failure:
    """A finished request's headers, or its error (translated)."""
    try:
        _wait(request, url, action)
    except (StagerError, OSError) as exc:
        return exc
    return Headers(received)


def _wait(request: Any, url: S3Url, action: str, *, keep: tuple[type[Exception], ...] = ()) -> None:
    """Wait for a native request; cancel it if we are interrupted; translate its
    error unless it is one of ``keep`` (for the caller to judge)."""
    future: concurrent.futures.Future[None] = request.finished_future
    try:
        while True:
            try:
                future.result(timeout=_WAIT_SLICE_S)
                return
            except concurrent.futures.TimeoutError:
                continue
    except KeyboardInterrupt:
        request.cancel()
        raise
    except (OSError, StagerError):  # our sink's own errors, raised inside a callback
        raise
    except keep:
        raise
    except Exception as exc:
        raise translate_crt(exc, str(url), action) from exc
