import io

import pytest

from stager.digest import (
    Hasher,
    HashingWriter,
    digest_bytes,
    digest_stream,
    is_digest,
    parse_digest,
)
from stager.errors import IntegrityError

# Reference values of XXH3-128 (seed 0), independent of this code.
EMPTY = "xxh3-128:99aa06d3014798d86001c324468d497f"


def test_empty_input_has_the_reference_digest() -> None:
    assert digest_bytes(b"") == EMPTY


def test_stream_and_incremental_agree_with_one_shot() -> None:
    data = bytes(range(256)) * 10_000
    hasher = Hasher()
    for start in range(0, len(data), 777):
        hasher.update(data[start : start + 777])
    assert hasher.digest == digest_bytes(data)
    assert hasher.size == len(data)
    assert digest_stream(io.BytesIO(data), chunk_bytes=4096) == (digest_bytes(data), len(data))


def test_different_bytes_give_different_digests() -> None:
    assert digest_bytes(b"a") != digest_bytes(b"b")


def test_hashing_writer_forwards_bytes_and_is_not_seekable() -> None:
    target = io.BytesIO()
    writer = HashingWriter(target)
    writer.write(b"hello ")
    writer.write(b"world")
    assert target.getvalue() == b"hello world"
    assert writer.hasher.digest == digest_bytes(b"hello world")
    assert writer.seekable() is False


def test_parse_digest_normalizes_and_rejects() -> None:
    assert parse_digest(EMPTY.upper().replace("XXH3-128", "xxh3-128")) == EMPTY
    assert is_digest(EMPTY)
    for bad in ["", "xxh3-128:", "sha256:" + "0" * 32, "xxh3-128:" + "g" * 32, EMPTY + "0"]:
        with pytest.raises(IntegrityError):
            parse_digest(bad)
