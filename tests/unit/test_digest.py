import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stager.digest import (
    Digest,
    Hasher,
    HashingWriter,
    digest_bytes,
    digest_stream,
    once_more_on_mismatch,
)
from stager.errors import DigestFormatError, IntegrityError

# Reference values of XXH3-128 (seed 0), independent of this code.
EMPTY = "xxh3-128:99aa06d3014798d86001c324468d497f"


def test_empty_input_has_the_reference_digest() -> None:
    assert str(digest_bytes(b"")) == EMPTY


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


def test_parse_normalizes_case_and_blanks_to_one_value() -> None:
    shouted = "  XXH3-128:" + EMPTY.split(":")[1].upper() + "\n"
    assert Digest.parse(shouted) == digest_bytes(b"")
    assert str(Digest.parse(shouted)) == EMPTY
    assert hash(Digest.parse(shouted)) == hash(digest_bytes(b""))
    assert Digest.from_hex(EMPTY.split(":")[1]) == digest_bytes(b"")
    assert digest_bytes(b"").hex == EMPTY.split(":")[1]


@pytest.mark.parametrize(
    "bad",
    ["", "xxh3-128:", "sha256:" + "0" * 32, "xxh3-128:" + "g" * 32, EMPTY + "0", "0" * 32],
)
def test_parse_refuses_what_is_not_a_digest_as_a_usage_error(bad: str) -> None:
    with pytest.raises(DigestFormatError) as caught:
        Digest.parse(bad)
    assert caught.value.exit_code == 2  # a typo, not damage (exit 7)
    assert "xxh3-128:" in caught.value.hint


def test_from_hex_and_the_constructor_refuse_wrong_shapes() -> None:
    with pytest.raises(DigestFormatError):
        Digest.from_hex("AB" * 16)  # an entry's name is lower case, always
    with pytest.raises(DigestFormatError):
        Digest(b"\x00" * 15)
    with pytest.raises(DigestFormatError):
        Digest(b"\x00" * 16, algorithm="md5")


@given(st.binary(min_size=16, max_size=16))
def test_text_form_round_trips(value: bytes) -> None:
    digest = Digest(value)
    assert Digest.parse(str(digest)) == digest
    assert Digest.from_hex(digest.hex) == digest


def test_once_more_on_mismatch_retries_once_then_raises() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("replaced mid-transfer")
        return "ok"

    assert once_more_on_mismatch(flaky) == "ok"

    def damaged() -> str:
        calls.append(1)
        raise IntegrityError("damaged")

    calls.clear()
    with pytest.raises(IntegrityError):
        once_more_on_mismatch(damaged)
    assert len(calls) == 2
