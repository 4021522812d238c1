"""One line in a Parsl ``Config``: the ``storage_access`` list, and memoization by content.

::

    HighThroughputExecutor(..., storage_access=stager_storage(NodeOptions(cache_quota="100G")))

:func:`stager_storage` puts :class:`StagerStaging` first and Parsl's own
providers after it, so ``file://``, ``http(s)://``, ``ftp://`` and zip files
stage as before. :func:`register_memo` makes Parsl's app cache and checkpoints
name an ``s3://`` input by its content (its digest, else its ETag and size),
so a renamed or re-uploaded but identical input finds the recorded result.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

from parsl.data_provider.data_manager import default_staging
from parsl.data_provider.files import File
from parsl.dataflow.memoization import id_for_memo

from stager.cli.context import CliState
from stager.errors import StagerError
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from worker_hooks.parsl.node import NodeOptions
from worker_hooks.parsl.staging import SCHEME, StagerStaging

__all__ = ["NodeOptions", "register_memo", "stager_storage"]


def stager_storage(node: NodeOptions | None = None) -> list[Any]:
    """A ``storage_access`` list: stager for ``s3://``, then Parsl's defaults."""
    return [StagerStaging(node), *default_staging]


_store: ObjectStore | None = None
_store_lock = threading.Lock()


def _submit_side_store() -> ObjectStore:
    global _store
    with _store_lock:
        if _store is None:
            _store = CliState(flags={}, config_path=None).object_store()
        return _store


def content_identity(url: S3Url, store: ObjectStore) -> str:
    """What names an object's bytes: its digest, else its ETag and size; else its URL
    (it cannot be read now: the task's stage-in will say why)."""
    try:
        info = store.head(url)
    except StagerError:
        info = None
    if info is None:
        return f"url:{url}"
    if info.digest is not None:
        return str(info.digest)
    return f"etag:{info.etag}:{info.size}"


def _file_memo_id(file: File, output_ref: bool = False) -> bytes:
    if output_ref or file.scheme != SCHEME:  # an output is named by where it goes
        return pickle.dumps(["File", file.url])
    return pickle.dumps(["File", content_identity(S3Url.parse(file.url), _submit_side_store())])


def register_memo() -> None:
    """Name ``File`` arguments by content in Parsl's memo keys (one HEAD per ``s3://``
    input per app call, on the submit host); other ``File``\\ s by their URL."""
    id_for_memo.register(File)(_file_memo_id)
