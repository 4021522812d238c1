"""Stage-out of `s3` outputs, with and without a copy in the node cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsd.cache import NodeCache
from stager.digest import digest_bytes
from stager.errors import StageOutError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from worker_hooks.wrap.outputs import FoundOutput
from worker_hooks.wrap.stageout import IN_MEMORY_BYTES, upload_outputs

GIB = 1024**3


def _output(sandbox: Path, name: str, data: bytes, url: S3Url) -> FoundOutput:
    path = sandbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FoundOutput(path, name, url, len(data))


@pytest.mark.parametrize("cache_s3", [True, False], ids=["cached", "straight-to-s3"])
def test_s3_outputs_are_published_whole_with_their_digest(
    tmp_path: Path, store: ObjectStore, prefix: S3Url, cache_s3: bool
) -> None:
    cache = NodeCache(tmp_path / "cache", quota_bytes=GIB)
    outputs = {
        "results/a b ü.txt": b"small output\n" * 50,
        "empty.dat": b"",
        "big.bin": bytes(range(256)) * (IN_MEMORY_BYTES // 256 + 300),  # read from the file
    }
    found = [
        _output(tmp_path / "sandbox", name, data, prefix.child(name))
        for name, data in outputs.items()
    ]
    records = upload_outputs(found, cache=cache, store=store, task="k1", cache_s3=cache_s3)
    for record, (name, data) in zip(records, outputs.items(), strict=True):
        assert (record.path, record.digest, record.size) == (name, digest_bytes(data), len(data))
        assert store.get_bytes(prefix.child(name)) == data
        info = store.head(prefix.child(name))
        assert info is not None and (info.digest, info.task) == (digest_bytes(data), "k1")
        # The node keeps a copy when a task may read it here; a large output goes
        # through the cache anyway, so that it is read once.
        kept = cache_s3 or len(data) >= IN_MEMORY_BYTES
        assert (cache.lookup(digest_bytes(data)) is not None) is kept


def test_an_output_that_grew_after_it_was_found_is_refused(
    tmp_path: Path, store: ObjectStore, prefix: S3Url
) -> None:
    url = prefix.child("growing.log")
    found = _output(tmp_path / "sandbox", "growing.log", b"line\n" * 10, url)
    with found.path.open("ab") as log:  # a process the task left behind writes on
        log.write(b"late line\n")
    with pytest.raises(StageOutError, match="changed while it was staged out"):
        upload_outputs([found], cache=None, store=store, task="k1", cache_s3=False)
    assert store.head(url) is None  # nothing published
