"""Translation of botocore's error shapes (built here as botocore builds them)."""

import importlib
import itertools
import pkgutil

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

import fsd
import stager
import worker_hooks
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
    """botocore's shapes; the native client's are tested against a real endpoint."""
    error = translate(client_error(code, status), "s3://b/k", "read")
    assert type(error) is kind
    assert "s3://b/k" in error.message


@pytest.mark.parametrize(
    ("status", "kind"), [(401, errors.AccessDeniedError), (400, errors.StagerError)]
)
def test_an_answer_without_an_s3_error_says_the_endpoint_may_not_be_s3(
    status: int, kind: type[errors.StagerError]
) -> None:
    # botocore fills in the status as the code when the body holds no S3 error.
    response = {
        "Error": {"Code": str(status), "Message": ""},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error = translate(ClientError(response, "HeadObject"), "s3://b/k", "read")  # type: ignore[arg-type]
    assert type(error) is kind
    assert f"HTTP {status} without an S3 error" in error.message
    assert f"{status}: {status}" not in error.one_line() and "S3 server" in error.hint


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


def _tree(root: type[errors.StagerError]) -> list[type[errors.StagerError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_tree(sub))
    return found


def _import_every_module() -> None:
    for package in (stager, fsd, worker_hooks):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # that one runs the command
                importlib.import_module(info.name)


def test_every_error_is_in_the_one_tree_with_its_own_exit_code() -> None:
    _import_every_module()  # so that an error class defined anywhere is seen
    tree = _tree(errors.StagerError)
    outside = [kind.__qualname__ for kind in tree if kind.__module__ != errors.__name__]
    assert outside == []
    undrawn = [kind.__name__ for kind in tree if kind.__name__ not in (errors.__doc__ or "")]
    assert undrawn == []
    for a, b in itertools.combinations(tree, 2):
        if a.exit_code == b.exit_code:  # only refinements of one kind share its code
            kinds_a = {k for k in a.__mro__ if getattr(k, "exit_code", None) == a.exit_code}
            kinds_b = {k for k in b.__mro__ if getattr(k, "exit_code", None) == b.exit_code}
            assert kinds_a & kinds_b, (a.__name__, b.__name__, a.exit_code)
    assert all(kind.exit_code > 1 for kind in tree if kind is not errors.StagerError)


def test_throttling_and_a_taken_key_exit_differently() -> None:
    assert errors.ThrottledError.exit_code != errors.PreconditionFailedError.exit_code


def test_a_body_that_names_the_right_region_is_said_in_one_line() -> None:
    from awscrt.s3 import S3ResponseError

    from stager.s3errors import translate_crt

    body = (
        b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1'"
        b" is wrong; expecting 'ap-south-1'</Message><Region>ap-south-1</Region></Error>"
    )
    native = S3ResponseError(code=1, name="x", message="x", status_code=400, headers=[], body=body)
    response = {
        "Error": {"Code": "AuthorizationHeaderMalformed", "Region": "ap-south-1"},
        "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}},
    }
    botocore_error = ClientError(response, "GetObject")  # type: ignore[arg-type]
    for error in (
        translate_crt(native, "s3://lab/ref.fa", "read"),
        translate(botocore_error, "s3://lab/ref.fa", "read"),
    ):
        assert isinstance(error, errors.ConfigError)
        assert error.one_line() == (
            "bucket 'lab' is in region ap-south-1: requests to it must go there "
            "(use --region ap-south-1 (or AWS_REGION=ap-south-1))"
        )
