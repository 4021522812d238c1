"""Translate S3 client exceptions (botocore, s3transfer, the native client) into
stager's hierarchy.

This is the only module that knows their error shapes. Callers wrap S3
calls in :func:`translating` and get a :class:`~stager.errors.StagerError`
naming the location and the action, with the original as ``__cause__``.
Neither client is imported here: an error of one that is not loaded cannot
be raised, and a command that never loads botocore never pays its 0.3 s.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from stager.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    PreconditionFailedError,
    StagerError,
    ThrottledError,
    UnreachableError,
)

_NOT_FOUND = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
    }
)
_THROTTLED = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"}
)
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


def _botocore_errors() -> tuple[type[Exception], ...]:
    """The base types of botocore's and s3transfer's errors, of those loaded."""
    found: list[type[Exception]] = []
    if (bce := sys.modules.get("botocore.exceptions")) is not None:
        found += [bce.BotoCoreError, bce.ClientError]
    if (transfer := sys.modules.get("s3transfer.exceptions")) is not None:
        found.append(transfer.RetriesExceededError)
    return tuple(found)


def translate(exc: Exception, where: str, action: str) -> StagerError:
    """Return the stager error for ``exc`` raised while doing ``action`` on ``where``."""
    if isinstance(exc, StagerError) or not isinstance(exc, _botocore_errors()):
        return _other(exc, where, action)
    from botocore import exceptions as bce  # loaded: exc is one of its errors
    from s3transfer.exceptions import RetriesExceededError

    unreachable = (
        bce.EndpointConnectionError,
        bce.ConnectTimeoutError,
        bce.ReadTimeoutError,
        bce.ConnectionClosedError,
        bce.ProxyConnectionError,
        RetriesExceededError,
    )
    if isinstance(exc, bce.ClientError):
        return _from_client_error(exc, where, action)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return AccessDeniedError(f"cannot {action} {where}: no AWS credentials were found")
    if isinstance(exc, bce.ProfileNotFound):
        return ConfigError(f"AWS profile not found: {exc.kwargs.get('profile')}")
    if isinstance(exc, bce.SSLError):
        return tls_failure(where, action, "certificate verify failed")
    if isinstance(exc, unreachable):
        return UnreachableError(f"cannot {action} {where}: the S3 endpoint did not answer ({exc})")
    if isinstance(exc, bce.BotoCoreError):
        return StagerError(f"cannot {action} {where}: {exc}")
    return _other(exc, where, action)


def _other(exc: Exception, where: str, action: str) -> StagerError:
    if isinstance(exc, StagerError):
        return exc
    return StagerError(f"cannot {action} {where}: {exc.__class__.__name__}: {exc}")


def _from_client_error(exc: Any, where: str, action: str) -> StagerError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    meta = exc.response.get("ResponseMetadata", {})
    status = str(meta.get("HTTPStatusCode", ""))
    region = meta.get("HTTPHeaders", {}).get(REGION_HEADER) or error.get("Region") or ""
    if wrong := _wrong_region(code, status, region, where):
        return wrong
    return _from_response(code, status, error.get("Message") or "", where, action)


REGION_HEADER = "x-amz-bucket-region"
_REDIRECTS = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)


def _wrong_region(code: str, status: str, region: str, where: str) -> StagerError | None:
    """The bucket lives in another region than the one asked: say which (AWS answers a
    301, or a 400 whose body names the region the signature should have used)."""
    if not region or not (code in _REDIRECTS or status in ("301", "400")):
        return None
    bucket = where.removeprefix("s3://").split("/", 1)[0]
    return ConfigError(
        f"bucket {bucket!r} is in region {region}: requests to it must go there",
        hint=f"use --region {region} (or AWS_REGION={region})",
    )


def _from_response(code: str, status: str, message: str, where: str, action: str) -> StagerError:
    """The stager error for an S3 error response (its code, HTTP status and message)."""
    detail = message or code or status
    if code in _NOT_FOUND or status == "404":
        what = "bucket" if code == "NoSuchBucket" else "object"
        return NotFoundError(f"cannot {action} {where}: no such {what}")
    if code in _DENIED or status == "403":
        return AccessDeniedError(f"cannot {action} {where}: access denied ({detail})")
    if code in _PRECONDITION or status == "412":
        return PreconditionFailedError(f"cannot {action} {where}: it already exists")
    if code in _THROTTLED:
        return ThrottledError(f"cannot {action} {where}: the store is throttling requests")
    if status.startswith("5"):
        return UnreachableError(
            f"cannot {action} {where}: the server failed ({detail})",
            hint="the S3 server reported an internal error; retry later",
        )
    if code in ("", status):  # no S3 error document: the endpoint may not be S3 at all
        kind = AccessDeniedError if status == "401" else StagerError
        return kind(
            f"cannot {action} {where}: the endpoint answered HTTP {status} without an S3 error",
            hint="check that --endpoint-url / AWS_ENDPOINT_URL names an S3 server",
        )
    return StagerError(f"cannot {action} {where}: {code or status}: {detail}")


@contextlib.contextmanager
def translating(where: object, action: str) -> Iterator[None]:
    """Run the block, re-raising botocore / s3transfer errors as stager errors."""
    try:
        yield
    except StagerError:
        raise
    except Exception as exc:
        if not isinstance(exc, _botocore_errors()):
            raise
        raise translate(exc, str(where), action) from exc


def translate_response(
    status_code: int, headers: Mapping[str, str], body: bytes, where: str, action: str
) -> StagerError:
    """The stager error for an S3 answer that is not a success (``headers`` with names
    lower-cased, ``body`` its error document if any)."""
    text = body.decode("utf-8", "replace")
    code, status = _xml_text(text, "Code"), str(status_code)
    region = headers.get(REGION_HEADER) or _xml_text(text, "Region")
    if wrong := _wrong_region(code, status, region, where):
        return wrong
    return _from_response(code, status, _xml_text(text, "Message"), where, action)


def translate_crt(exc: Exception, where: str, action: str) -> StagerError:
    """Return the stager error for ``exc`` from the native client (:mod:`stager.crt`)."""
    from awscrt import exceptions as crt_errors  # loaded with the client, not at start-up
    from awscrt import s3 as crt_s3

    if isinstance(exc, StagerError):
        return exc
    if isinstance(exc, crt_s3.S3ResponseError):
        headers = {name.lower(): value for name, value in exc.headers or ()}
        return translate_response(exc.status_code, headers, exc.body or b"", where, action)
    if isinstance(exc, crt_errors.AwsCrtError):
        if exc.name.startswith("AWS_AUTH"):  # the keys could not be had, or not used
            return AccessDeniedError(
                f"cannot {action} {where}: could not sign the request ({exc.name})"
            )
        if exc.name.startswith("AWS_IO_TLS"):
            return tls_failure(where, action, exc.name)
        if exc.name == "AWS_ERROR_S3_INTERNAL_ERROR":  # 5xx after the client's own retries
            return _from_response("", "500", exc.message, where, action)
        if exc.name == "AWS_ERROR_S3_SLOW_DOWN":
            return _from_response("SlowDown", "503", exc.message, where, action)
        if exc.name.startswith(_CRT_UNREACHABLE_PREFIXES) or "TIMEOUT" in exc.name:
            return UnreachableError(
                f"cannot {action} {where}: the S3 endpoint did not answer ({exc.name})"
            )
        return StagerError(f"cannot {action} {where}: {exc.name}: {exc.message}")
    return StagerError(f"cannot {action} {where}: {exc.__class__.__name__}: {exc}")


_CRT_UNREACHABLE_PREFIXES = ("AWS_IO_SOCKET", "AWS_IO_DNS", "AWS_ERROR_HTTP_CONNECTION")


def tls_failure(where: str, action: str, detail: str) -> StagerError:
    return UnreachableError(
        f"cannot {action} {where}: TLS with the S3 endpoint failed ({detail})",
        hint="check the endpoint's certificate, or point ca_bundle (AWS_CA_BUNDLE)"
        " at the CA that signed it",
    )


def _xml_text(body: str, tag: str) -> str:
    """The text of the first ``<tag>`` in an S3 error body ("" if none)."""
    start = body.find(f"<{tag}>")
    end = body.find(f"</{tag}>", start)
    return body[start + len(tag) + 2 : end].strip() if start >= 0 and end > start else ""
