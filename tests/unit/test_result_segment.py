"""Result segments: many tasks' results in one object, counted only when whole."""

from __future__ import annotations

import pytest

from stager.digest import Digest
from stager.errors import StagerError
from stager.locations import S3Url
from worker_hooks.task.key import key_of_spec, task_key
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.result import FileRecord, ResultManifest, ResultSegment

DIGEST = Digest.parse("xxh3-128:" + "e" * 32)


def manifest(n: int) -> ResultManifest:
    out = FileRecord("out.txt", S3Url.parse(f"s3://bkt/out/{n} ü.txt"), DIGEST, n)
    return ResultManifest(
        f"t{n}", f"{n:032x}", ("sh", "-c", "echo 'ü'"), 0, "h", "now", {}, (), (out,)
    )


SEGMENT = ResultSegment("node-1/4242", "2026-12-03T23:00:00.000+00:00", (manifest(1), manifest(2)))


def test_a_segment_reads_back_as_written() -> None:
    assert ResultSegment.from_bytes(SEGMENT.to_bytes()) == SEGMENT
    empty = ResultSegment("w", "now", ())
    assert ResultSegment.from_bytes(empty.to_bytes()) == empty


def test_a_segment_cut_short_anywhere_never_counts() -> None:
    data = SEGMENT.to_bytes()
    for cut in range(len(data) - 1):  # all but the final newline, which adds nothing
        with pytest.raises(StagerError):
            ResultSegment.from_bytes(data[:cut])


def test_a_changed_or_reordered_segment_never_counts() -> None:
    data = SEGMENT.to_bytes()
    changed = data.replace(b'"exit_code": 0', b'"exit_code": 1', 1)
    header, first, second, end = data.splitlines(keepends=True)
    for damaged in (changed, header + second + first + end, header + first + end):
        with pytest.raises(StagerError, match="incomplete"):
            ResultSegment.from_bytes(damaged)
    with pytest.raises(StagerError):
        ResultSegment.from_bytes(b"not a segment\n")


def test_the_dispatcher_and_the_node_compute_the_same_key() -> None:
    body = {
        "id": "a",
        "command": ["cp", "in/x", "out"],
        "env": {"B": "2", "A": "1"},
        "inputs": [{"source": "s3://bkt/x", "path": "./in//x", "digest": str(DIGEST), "size": 3}],
        "outputs": [{"path": "out", "to": "s3://bkt/out"}],
    }
    spec = parse_spec(body)
    assert key_of_spec(spec) == task_key(spec, [("in/x", str(DIGEST))], None)
    assert key_of_spec(parse_spec({**body, "id": "other"})) == key_of_spec(spec)
    no_digest = {**body, "inputs": [{"source": "s3://bkt/x", "path": "in/x"}]}
    assert key_of_spec(parse_spec(no_digest)) is None  # only the node learns it
    prefix = {**body, "inputs": [{"source": "s3://bkt/dir/", "path": "in"}]}
    assert key_of_spec(parse_spec(prefix)) is None
