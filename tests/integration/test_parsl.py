"""Parsl with stager's staging provider: a real HighThroughputExecutor (LocalProvider)
on this machine, against the real S3 server (reached through a recording proxy)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

parsl = pytest.importorskip("parsl")

from parsl.app.app import bash_app, python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from bench.faultproxy import NO_FAULTS, FaultProxy, requested_bytes  # noqa: E402
from stager.digest import digest_bytes  # noqa: E402
from stager.locations import S3Url  # noqa: E402
from stager.objectinfo import DIGEST_METADATA_KEY  # noqa: E402
from stager.objectstore import ObjectStore  # noqa: E402
from stager.s3server import LocalS3Server  # noqa: E402
from worker_hooks.parsl import register_memo  # noqa: E402
from worker_hooks.parsl.example import local_config  # noqa: E402

BUCKET = "parsl-tests"
REFUSED = "refused-once"


@pytest.fixture(scope="module")
def proxy(s3_server: LocalS3Server) -> Iterator[FaultProxy]:
    quiet = replace(NO_FAULTS, refuse_paths=(REFUSED,))
    recorder = FaultProxy(s3_server.endpoint_url, quiet)
    recorder.start()
    yield recorder
    recorder.stop()


@pytest.fixture(scope="module")
def dfk(
    s3_server: LocalS3Server, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("parsl")
    s3_server.client().create_bucket(Bucket=BUCKET)
    saved = dict(os.environ)
    # What the workers inherit: S3 through the proxy, and the interpreter's own bin
    # (where Parsl's worker pool and interchange are).
    os.environ.update(s3_server.env())
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    os.environ["STAGER_STATE_DIR"] = str(work / "state")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    # The apps below are sent by reference to this module: workers must import it.
    os.environ["PYTHONPATH"] = str(Path(__file__).parents[2])
    register_memo()
    config = local_config(str(work), blocks=1, workers=8)
    try:
        with parsl.load(config) as loaded:
            yield loaded
    finally:
        os.environ.clear()
        os.environ.update(saved)


@bash_app
def concatenate(inputs: Any = (), outputs: Any = ()) -> str:
    return f"cat {inputs[0]} {inputs[1]} > {outputs[0]}"


@bash_app
def checksum(inputs: Any = ()) -> str:
    return f"cksum {inputs[0]} > /dev/null"


@python_app(cache=True)
def token(inputs: Any = ()) -> str:
    import secrets

    with open(inputs[0]) as handle:
        return f"{handle.read().strip()}:{secrets.token_hex(4)}"


def url(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def test_inputs_with_one_name_and_an_output_round_trip_with_digests(
    dfk: Any, store: ObjectStore, s3_server: LocalS3Server
) -> None:
    store.put_bytes(S3Url.parse(url("a/data.txt")), b"first\n")
    raw = s3_server.client()  # an object another tool wrote: no digest
    raw.put_object(Bucket=BUCKET, Key="b ü/data.txt", Body=b"second\n")
    future = concatenate(
        inputs=[File(url("a/data.txt")), File(url("b ü/data.txt"))],
        outputs=[File(url("out/joined.txt"))],
    )
    assert future.result() == 0
    future.outputs[0].result()
    info = store.head(S3Url.parse(url("out/joined.txt")))
    assert info is not None and info.digest == digest_bytes(b"first\nsecond\n")


def test_tasks_sharing_an_input_on_one_node_download_it_once(
    dfk: Any, store: ObjectStore, proxy: FaultProxy
) -> None:
    size = 64 * 1024 * 1024
    big = S3Url.parse(url("shared/reference.bin"))
    store.put_bytes(big, os.urandom(size))
    before = len(proxy.seen)
    futures = [checksum(inputs=[File(str(big))]) for _ in range(8)]
    assert [f.result() for f in futures] == [0] * 8
    gets = [h for m, p, h in proxy.seen[before:] if m == "GET" and "reference.bin" in p]
    assert gets and sum(requested_bytes(h, size) for h in gets) == size  # its bytes, once


def test_a_corrupted_object_is_refused_and_the_task_fails_saying_so(
    dfk: Any, store: ObjectStore, s3_server: LocalS3Server
) -> None:
    key = "damaged/input.txt"
    digest = store.put_bytes(S3Url.parse(url(key)), b"the right bytes\n")
    s3_server.client().put_object(  # other bytes under the old digest
        Bucket=BUCKET,
        Key=key,
        Body=b"the wrong bytes\n",
        Metadata={DIGEST_METADATA_KEY: str(digest)},
    )
    future = checksum(inputs=[File(url(key))])
    with pytest.raises(Exception, match="digest") as caught:
        future.result()
    assert url(key) in str(caught.value)


def test_a_failed_upload_fails_the_task_and_parsls_retry_succeeds(
    dfk: Any, store: ObjectStore, proxy: FaultProxy
) -> None:
    store.put_bytes(S3Url.parse(url("in/one.txt")), b"1\n")
    out = url(f"out/{REFUSED}.txt")  # its first request is refused (403)
    future = concatenate(
        inputs=[File(url("in/one.txt")), File(url("in/one.txt"))], outputs=[File(out)]
    )
    assert future.result() == 0
    assert proxy.injected["refuse"] == 1
    assert store.get_bytes(S3Url.parse(out)) == b"1\n1\n"


def test_memoization_names_an_input_by_its_content(dfk: Any, store: ObjectStore) -> None:
    store.put_bytes(S3Url.parse(url("memo/original.txt")), b"same\n")
    store.put_bytes(S3Url.parse(url("memo/renamed copy.txt")), b"same\n")
    store.put_bytes(S3Url.parse(url("memo/other.txt")), b"other\n")
    first = token(inputs=[File(url("memo/original.txt"))]).result()
    assert first.startswith("same:")
    assert token(inputs=[File(url("memo/renamed copy.txt"))]).result() == first
    assert token(inputs=[File(url("memo/other.txt"))]).result().startswith("other:")


def test_other_schemes_stay_with_parsls_own_providers(dfk: Any, tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_text("local\n")
    assert token(inputs=[File(str(local))]).result().startswith("local:")


@bash_app
def copy_folder(inputs: Any = (), outputs: Any = (), stdout: Any = None) -> str:
    return f"mkdir -p {outputs[0]} && cp -r {inputs[0]}/. {outputs[0]}/ && ls -R {inputs[0]}"


def test_folders_and_stdout_stage_both_ways(dfk: Any, store: ObjectStore) -> None:
    for key, data in (("tree/a.txt", b"a\n"), ("tree/sub/b ü.txt", b"b\n")):
        store.put_bytes(S3Url.parse(url(key)), data)
    future = copy_folder(
        inputs=[File(url("tree/"))],
        outputs=[File(url("copied/"))],
        stdout=File(url("logs/listing.txt")),
    )
    assert future.result() == 0
    for output in (*future.outputs, future.stdout):
        if hasattr(output, "result"):
            output.result()
    assert store.get_bytes(S3Url.parse(url("copied/a.txt"))) == b"a\n"
    info = store.head(S3Url.parse(url("copied/sub/b ü.txt")))
    assert info is not None and info.digest == digest_bytes(b"b\n")
    assert b"b \xc3\xbc.txt" in store.get_bytes(S3Url.parse(url("logs/listing.txt")))
