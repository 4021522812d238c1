"""Publishing an output at its final key: ours, adopted from a twin run, or replacing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from stager.digest import digest_bytes
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.publish import publish

MiB = 1024 * 1024


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("size", "in_memory"),
    [(1000, False), (1000, True), (12 * MiB, False)],
    ids=["one-put", "from-memory", "multipart"],
)
def test_the_rules_of_publication(
    either_store: ObjectStore,
    prefix: S3Url,
    tmp_path: Path,
    raw_client: Any,
    size: int,
    in_memory: bool,
) -> None:
    store = either_store
    url = prefix.child("out.bin")
    mine, twin = os.urandom(size), os.urandom(size)
    path: Path | bytes = mine if in_memory else _file(tmp_path, "mine", mine)

    def put(data: bytes, task: str) -> None:
        source = _file(tmp_path, "other", data)
        store.upload_file(source, url, digest=digest_bytes(data), size=size, task=task)

    # A free key: the object is ours.
    done = publish(store, path, url, digest=digest_bytes(mine), size=size, task="k1")
    assert (done.digest, done.adopted) == (digest_bytes(mine), False)
    # Another run of the same task got there first: its bytes are adopted, not replaced.
    put(twin, "k1")
    done = publish(store, path, url, digest=digest_bytes(mine), size=size, task="k1")
    assert (done.digest, done.size, done.adopted) == (digest_bytes(twin), size, True)
    assert digest_bytes(store.get_bytes(url)) == digest_bytes(twin)
    # ... unless this run is told to replace its own (stager wrap --force).
    done = publish(
        store, path, url, digest=digest_bytes(mine), size=size, task="k1", replace_own=True
    )
    assert not done.adopted and store.get_bytes(url) == mine
    # A run with other inputs (another task key), or another tool, is replaced.
    put(twin, "k0")
    done = publish(store, path, url, digest=digest_bytes(mine), size=size, task="k1")
    assert not done.adopted and store.get_bytes(url) == mine
    raw_client.put_object(Bucket=url.bucket, Key=url.key, Body=twin)
    done = publish(store, path, url, digest=digest_bytes(mine), size=size, task="k1")
    assert not done.adopted and store.get_bytes(url) == mine
    info = store.head(url)
    assert info is not None and info.task == "k1" and info.digest == digest_bytes(mine)


def test_runs_of_one_task_are_ordered_by_attempt_whatever_order_they_arrive_in(
    either_store: ObjectStore, prefix: S3Url, tmp_path: Path
) -> None:
    store = either_store
    url = prefix.child("merged.bin")
    runs = {n: os.urandom(2000) for n in (1, 2, 3)}

    def write(attempt: int, key: str) -> Any:
        data = runs[attempt]
        source = _file(tmp_path, f"run{attempt}", data)
        return publish(
            store,
            source,
            url,
            digest=digest_bytes(data),
            size=len(data),
            task=key,
            generation=f"reduce-7/{attempt}",
        )

    assert not write(2, "key-b").adopted  # the redo (other inputs, another key) lands first
    late = write(1, "key-a")  # the first run's write behind arrives late: it must not land
    assert late.superseded and late.digest == digest_bytes(runs[2])
    assert not write(3, "key-c").superseded  # a later redo replaces it
    info = store.head(url)
    assert info is not None and info.digest == digest_bytes(runs[3])
    assert info.generation == "reduce-7/3"
