"""Where a task's result lives, and whether it is already done (memoization).

A task's *key* names what it computes: its command, environment, input
identities (digests), bundle and output declarations, but not its id or
timeout. The result manifest for a key is written last, create-only, at
``<results prefix><key>/result.json``; logs of every run, failed ones
included, sit beside it under ``runs/<run id>/``.
"""

from __future__ import annotations

import json

from stager.digest import digest_bytes
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
from worker_hooks.task.result import FileRecord, ResultManifest
from worker_hooks.task.spec import TaskSpec


def task_key(spec: TaskSpec, inputs: list[tuple[str, str]], bundle_identity: str | None) -> str:
    """The hex key of what ``spec`` computes from ``inputs``: (sandbox path, identity) of
    every file staged (a collection's members each by itself)."""
    body = {
        "command": list(spec.command),
        "shell": spec.shell,
        "env": dict(sorted(spec.env.items())),
        "inputs": [[path, ident] for path, ident in inputs],
        "outputs": [[o.path, str(o.to), o.persist.value] for o in spec.outputs],
        "bundle": [spec.bundle.path, bundle_identity] if spec.bundle else None,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return digest_bytes(canonical).hex


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

    def intact(record: FileRecord) -> bool:
        info = store.head(record.url)
        return info is not None and info.digest == record.digest and info.size == record.size

    return manifest if all(run_all(intact, manifest.outputs, workers=workers)) else None


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
