"""Where a task's result lives, and whether it is already done (memoization).

A task's *key* (:mod:`worker_hooks.task.key`) names what it computes. ``stager
wrap`` alone writes the result manifest for a key last, create-only, at
``<results prefix><key>/result.json``; logs of every run, failed ones
included, sit beside it under ``runs/<run id>/``. A worker instead writes the
results of many tasks as one *result segment* under
``<results prefix>segments/<worker>/`` (:func:`write_segment`), and the
dispatcher answers its memo lookups. :func:`recorded_results` reads both
kinds back.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from stager.cli.context import CliState
from stager.errors import (
    IntegrityError,
    NotFoundError,
    PreconditionFailedError,
    StageOutError,
    StagerError,
)
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.parallel import run_all
from worker_hooks.task.result import FileRecord, ResultManifest, ResultSegment
from worker_hooks.task.spec import TaskSpec


def result_url(spec: TaskSpec, key: str) -> S3Url:
    return spec.results_prefix.child(f"{key}/result.json")


def log_url(spec: TaskSpec, key: str, run_id: str, name: str) -> S3Url:
    """Where one run's log goes: every run (attempt) of a task keeps its own."""
    return spec.results_prefix.child(f"{key}/runs/{run_id}/{name}")


def committed_result(store: ObjectStore, url: S3Url, *, workers: int = 16) -> ResultManifest | None:
    """The result at ``url`` if it exists and every output it lists is still intact.

    Outputs are checked with parallel HEADs. A result that cannot be read
    raises :class:`IntegrityError` (``--force`` replaces it).
    """
    try:
        data = store.get_bytes(url)
    except NotFoundError:
        return None
    try:
        manifest = ResultManifest.from_bytes(data)
    except StagerError as exc:
        raise IntegrityError(
            f"the recorded result {url} is unreadable: {exc.message}",
            hint="run the task with --force to replace it",
        ) from exc

    return manifest if intact(store, manifest, workers=workers) else None


def intact(store: ObjectStore, manifest: ResultManifest, *, workers: int = 16) -> bool:
    """Whether every output ``manifest`` lists is in S3 as it recorded (parallel HEADs)."""

    def there(record: FileRecord) -> bool:
        info = store.head(record.url)
        return info is not None and info.digest == record.digest and info.size == record.size

    return all(run_all(there, manifest.outputs, workers=workers))


def commit(store: ObjectStore, url: S3Url, manifest: ResultManifest) -> None:
    """Write the manifest create-only; a twin run that committed first is accepted.

    A manifest already there whose outputs are not all intact in S3 vouches
    for nothing (outputs kept on a node that was lost, and now recomputed;
    outputs deleted since): it is replaced.
    """
    try:
        store.put_bytes(url, manifest.to_bytes(), create_only=True)
    except PreconditionFailedError:
        try:
            if committed_result(store, url) is None:
                store.put_bytes(url, manifest.to_bytes())
        except StagerError as exc:
            raise StageOutError(
                f"cannot replace the result manifest {url}: {exc.one_line()}"
            ) from exc
    except StagerError as exc:
        raise StageOutError(f"cannot write the result manifest {url}: {exc.one_line()}") from exc


SEGMENTS = "segments/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def write_segment(
    store: ObjectStore, prefix: S3Url, worker: str, results: Sequence[ResultManifest]
) -> S3Url:
    """Write ``results`` as one new result segment under ``prefix``; where it went.

    Create-only under a fresh name: an object is there whole or not at all,
    and no segment replaces another.
    """
    now = datetime.now(UTC)
    segment = ResultSegment(worker, now.isoformat(timespec="milliseconds"), tuple(results))
    name = f"{_UNSAFE.sub('_', worker)[:100] or '_'}/{now:%Y%m%dT%H%M%S.%f}-{secrets.token_hex(4)}"
    url = prefix.child(f"{SEGMENTS}{name}.jsonl")
    try:
        store.put_bytes(url, segment.to_bytes(), create_only=True)
    except StagerError as exc:
        raise StageOutError(f"cannot write the result segment {url}: {exc.one_line()}") from exc
    return url


def recorded_results(store: ObjectStore, prefix: S3Url) -> Iterator[ResultManifest]:
    """Every result recorded under a results prefix: manifests and segments' records.

    A manifest or segment that cannot be read (cut short, another tool's
    object) is skipped: it vouches for nothing.
    """
    for url, _, _ in store.list(prefix):
        rest = url.key[len(prefix.key) :]
        if rest.startswith(SEGMENTS) and rest.endswith(".jsonl"):
            decode = _segment_results
        elif rest.endswith("/result.json") and rest.count("/") == 1:
            decode = _manifest_result
        else:
            continue
        try:
            yield from decode(store.get_bytes(url))
        except StagerError:
            continue


def results_at(url: str, config_path: Path | None = None) -> Iterator[ResultManifest]:
    """Every result recorded under the S3 prefix ``url``, read with this process's
    settings and credentials (``stager dispatcher serve --memo-from``)."""
    prefix = S3Url.parse(url if url.endswith("/") else url + "/")
    core = CliState(flags={}, config_path=config_path)
    try:
        yield from recorded_results(core.object_store(), prefix)
    finally:
        core.close()


def _segment_results(data: bytes) -> tuple[ResultManifest, ...]:
    return ResultSegment.from_bytes(data).results


def _manifest_result(data: bytes) -> tuple[ResultManifest, ...]:
    return (ResultManifest.from_bytes(data),)
