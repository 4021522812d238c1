from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stager.errors import InvalidUrlError, UnsafePathError
from stager.locations import S3Url, safe_relative_path


def test_parse_bucket_and_key() -> None:
    url = S3Url.parse("s3://my-bucket/run1/ref.fa")
    assert (url.bucket, url.key) == ("my-bucket", "run1/ref.fa")
    assert not url.is_prefix
    assert url.as_prefix() == S3Url("my-bucket", "run1/ref.fa/")
    assert str(url) == "s3://my-bucket/run1/ref.fa"


def test_bucket_root_and_prefixes() -> None:
    assert S3Url.parse("s3://my-bucket").is_prefix
    assert S3Url.parse("s3://my-bucket/").key == ""
    prefix = S3Url.parse("s3://my-bucket/run1/")
    assert prefix.child("a/b.txt") == S3Url("my-bucket", "run1/a/b.txt")
    assert S3Url("my-bucket", "run1/a/b.txt").relative_to(prefix) == "a/b.txt"


@pytest.mark.parametrize(
    "text",
    [
        "my-bucket/key",
        "http://x/y",
        "s3://",
        "s3://ab/k",
        "s3://Upper/k",
        "s3://a_b/k",
        "s3://bucket..name/k",
        "s3://bucket/a//b",
        "s3://bucket/a\x00b",
        "s3://bucket/../x",
        "s3://bucket/p/../../etc/o.txt",
        "s3://bucket/./o.txt",
        "s3://bucket/p/..",
    ],
)
def test_malformed_urls_are_refused(text: str) -> None:
    with pytest.raises(InvalidUrlError):
        S3Url.parse(text)


def test_relative_to_refuses_a_foreign_prefix() -> None:
    with pytest.raises(InvalidUrlError):
        S3Url("b-1", "x/y").relative_to(S3Url("b-1", "z/"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a/b.txt", "a/b.txt"), ("./a//b/./c", "a/b/c"), ("a/", "a"), ("..a/b..", "..a/b..")],
)
def test_safe_relative_paths_are_normalized(text: str, expected: str) -> None:
    assert safe_relative_path(text) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "text", ["../x", "a/../../x", "a/..", "/etc/passwd", "", ".", "a\x00b", "a\\..\\b"]
)
def test_unsafe_paths_are_refused(text: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(text)


@given(st.text())
def test_any_text_is_either_refused_or_stays_inside(text: str) -> None:
    try:
        path = safe_relative_path(text)
    except UnsafePathError:
        return
    assert not path.is_absolute()
    assert ".." not in path.parts
    assert path.parts and all(part not in ("", ".") for part in path.parts)
    assert "\x00" not in str(path)
