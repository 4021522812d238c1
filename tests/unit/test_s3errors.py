"""Translation of botocore's error shapes (built here as botocore builds them)."""

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from stager import errors
from stager.s3errors import translate


def client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "msg"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, errors.NotFoundError),
        ("NoSuchBucket", 404, errors.NotFoundError),
        ("404", 404, errors.NotFoundError),
        ("AccessDenied", 403, errors.AccessDeniedError),
        ("SignatureDoesNotMatch", 403, errors.AccessDeniedError),
        ("InvalidAccessKeyId", 403, errors.AccessDeniedError),
        ("PreconditionFailed", 412, errors.PreconditionFailedError),
        ("SlowDown", 503, errors.ThrottledError),
        ("InternalError", 500, errors.UnreachableError),
        ("Weird", 400, errors.StagerError),
    ],
)
def test_client_errors(code: str, status: int, kind: type[errors.StagerError]) -> None:
    error = translate(client_error(code, status), "s3://b/k", "read")
    assert type(error) is kind
    assert "s3://b/k" in error.message


def test_connection_failures_are_unreachable() -> None:
    for exc in [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ]:
        assert isinstance(translate(exc, "s3://b/k", "read"), errors.UnreachableError)


def test_missing_credentials_are_access_denied() -> None:
    error = translate(NoCredentialsError(), "s3://b/k", "read")
    assert isinstance(error, errors.AccessDeniedError)
    assert "AWS_ACCESS_KEY_ID" in error.one_line()


def test_exit_codes_are_distinct_per_kind() -> None:
    kinds = [
        errors.ConfigError,
        errors.NotFoundError,
        errors.AccessDeniedError,
        errors.UnreachableError,
        errors.ThrottledError,
        errors.IntegrityError,
        errors.LocalIOError,
        errors.DiskFullError,
    ]
    codes = [kind.exit_code for kind in kinds]
    assert len(set(codes)) == len(codes)
    assert all(code > 1 for code in codes)
