import threading
import time

import pytest

from stager.digest import Digest
from stager.errors import StagerError
from stager.manifest import Manifest, ManifestEntry
from stager.parallel import run_all

DIGEST = Digest.parse("xxh3-128:" + "0f" * 16)


def test_manifest_round_trip() -> None:
    manifest = Manifest(
        kind="push",
        created_at="2026-01-01T00:00:00Z",
        entries=(ManifestEntry("a/b.txt", "s3://bkt/run/a/b.txt", 3, DIGEST),),
    )
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    "text",
    [
        b"{}",
        b"not json",
        b'{"format": "stager-manifest/1", "kind": "push", "created_at": "x",'
        b' "entries": [{"path": "a", "url": "s3://b/a", "size": 1, "digest": "nope"}]}',
    ],
)
def test_malformed_manifests_are_refused(text: bytes) -> None:
    with pytest.raises(StagerError):
        Manifest.from_json(text)


def test_run_all_keeps_input_order() -> None:
    assert run_all(lambda n: n * n, list(range(50)), workers=8) == [n * n for n in range(50)]


def test_run_all_fails_fast_and_starts_no_more_work() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        with lock:
            started.append(n)
        if n == 0:
            raise ValueError("first item fails")
        time.sleep(0.01)
        return n

    with pytest.raises(ValueError, match="first item fails"):
        run_all(work, list(range(200)), workers=2)
    assert len(started) < 200
