"""The staging provider: ``File("s3://bucket/key")`` staged inside the task, on its node.

In-task staging (Parsl's ``replace_task``): the app function is wrapped, so
no shared file system and no separate staging task are needed, and the
bytes go straight from S3 (or the node's cache) to the node that runs the
app.

- **Stage-in** goes through the worker node's stager cache: one fetch per
  node for each object, however many workers of the node ask at once
  (single flight), its digest checked (an object stager wrote carries it; one
  another tool wrote is named by its ETag in the cache's source index).
  The file appears at its ``local_path`` as a read-only hard link, pinned in
  the cache while the app runs, removed after. A ``File`` whose URL ends in
  ``/`` is a prefix: every object under it is staged below ``local_path``.
- **Stage-out** runs after the app returns: the file (or, for a ``/`` URL,
  every file under the folder) is hashed while it is copied into the node's
  cache and uploaded with its digest, before the app's future completes. A
  failed upload fails the task, so Parsl's ``retries`` run it again.
- Each ``File`` gets its own ``local_path``, ``stager-staging/<random>/<name>``
  relative to the task's working directory: two ``File``\\ s with the same name
  never meet.

Credentials are the worker's (its environment, stager.toml or the instance
role); only :class:`NodeOptions` travel with a task.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from parsl.data_provider.files import File
from parsl.data_provider.staging import Staging
from parsl.dataflow.memoization import id_for_memo
from parsl.utils import RepresentationMixin

from fsd.materialize import Materialize
from fsd.stagein import StageInput, staged_inputs
from stager.errors import ConfigError, MissingOutputError, StagerError
from stager.locations import S3Url
from worker_hooks.parsl.node import NodeOptions, node_for
from worker_hooks.task.spec import OutputSpec
from worker_hooks.wrap.bundle import remove_tree
from worker_hooks.wrap.outputs import find_outputs
from worker_hooks.wrap.stageout import upload_outputs

SCHEME = "s3"
STAGING_DIR = "stager-staging"


def local_path_for(url: S3Url) -> str:
    """Where a ``File`` of ``url`` appears in a task's working directory (unique)."""
    name = PurePosixPath(url.key.rstrip("/")).name
    if name in ("", ".", ".."):  # a bucket's root, or a key no file may be named after
        name = "data"
    return f"{STAGING_DIR}/{secrets.token_hex(8)}/{name}"


class StagerStaging(Staging, RepresentationMixin):
    """Stages ``s3://`` files through each worker node's stager cache (module docstring).

    Other schemes are left to the providers after it in ``storage_access``.
    """

    def __init__(self, node: NodeOptions | None = None) -> None:
        self.node = node or NodeOptions()

    def can_stage_in(self, file: File) -> bool:
        return bool(file.scheme == SCHEME)

    def can_stage_out(self, file: File) -> bool:
        return bool(file.scheme == SCHEME)

    def stage_in(self, dm: Any, executor: str, file: File, parent_fut: Any) -> None:
        file.local_path = local_path_for(S3Url.parse(file.url))  # a bad URL fails the submit

    def stage_out(self, dm: Any, executor: str, file: File, app_fu: Any) -> None:
        file.local_path = local_path_for(S3Url.parse(file.url))

    def replace_task(
        self, dm: Any, executor: str, file: File, func: Callable[..., Any]
    ) -> Callable[..., Any]:
        return StageIn(func, file.url, _local_path(file), self.node)

    def replace_task_stage_out(
        self, dm: Any, executor: str, file: File, func: Callable[..., Any]
    ) -> Callable[..., Any]:
        return StageOut(func, file.url, _local_path(file), self.node)


def _local_path(file: File) -> str:
    if file.local_path is None:  # stage_in and stage_out set it first
        raise ConfigError(f"no local path was chosen for {file.url}")
    return file.local_path


class _Wrapped:
    """An app function wrapped with staging; pickled to the worker by reference to this
    module, with the function, the URL, the local path and the node options."""

    def __init__(
        self, func: Callable[..., Any], url: str, local_path: str, node: NodeOptions
    ) -> None:
        self.func = func
        self.url = url
        self.local_path = local_path
        self.node = node
        self.__name__ = getattr(func, "__name__", type(self).__name__)


@id_for_memo.register(_Wrapped)
def _wrapped_memo_id(wrapped: _Wrapped, output_ref: bool = False) -> bytes:
    """Parsl's memo key sees the app, not the staging around it (whose paths are new
    for every call)."""
    inner: bytes = id_for_memo(wrapped.func, output_ref)
    return inner


class StageIn(_Wrapped):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        node = node_for(self.node)
        url = S3Url.parse(self.url)
        local = Path(self.local_path)
        folder = local.parent
        inputs = [StageInput(url, local.name)]
        if url.is_prefix:  # every object under it, below the File's path
            inputs = [
                StageInput(member, f"{local.name}/{member.key[len(url.key) :]}", None, size)
                for member, size, _ in node.store.list(url)
                if not member.key.endswith("/")
            ]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with staged_inputs(
                inputs,
                folder,
                cache=node.cache,
                store=node.store,
                mode=node.materialize,
                nfs_head=node.nfs_head,
            ) as staged:
                links = [
                    (s.path, s.digest) for s in staged if s.materialized_as is Materialize.LINK
                ]
                try:
                    return self.func(*args, **kwargs)
                finally:
                    node.cache.release_links(links)
        except StagerError as exc:
            raise type(exc)(f"staging in {self.url}: {exc.one_line()}") from None
        finally:
            remove_tree(folder)


class StageOut(_Wrapped):
    def __init__(
        self, func: Callable[..., Any], url: str, local_path: str, node: NodeOptions
    ) -> None:
        super().__init__(func, url, local_path, node)
        self.call = f"parsl-{secrets.token_hex(8)}"  # made once per app call, kept by retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        node = node_for(self.node)
        url = S3Url.parse(self.url)
        local = Path(self.local_path)
        folder = local.parent
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = self.func(*args, **kwargs)
            name = f"{local.name}/" if url.is_prefix else local.name
            declared = OutputSpec(name, url)
            try:
                found = find_outputs(folder, [declared])
            except MissingOutputError as exc:
                raise MissingOutputError(f"the app did not write {self.url}") from exc
            # Named for this app call: a retry of it keeps an upload of its own that landed,
            # any other call (a workflow run again) replaces what is there.
            upload_outputs(found, cache=node.cache, store=node.store, task=self.call)
            return result
        except StagerError as exc:
            raise type(exc)(f"staging out {self.url}: {exc.one_line()}") from None
        finally:
            remove_tree(folder)
