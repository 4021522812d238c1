"""A task's *key*: what names the result it computes, wherever it is looked up.

The key hashes the command, environment, input identities, bundle and output
declarations, but not the task's id or timeout: two tasks with the same key
compute the same outputs, so one's result serves the other (memoization).
An input's identity is its digest where known, else the store's ETag and
size (learned by a HEAD, which only the node does).

The wrapper computes the key after resolving inputs; the dispatcher computes
it from the spec alone when the spec names every input's bytes
(:func:`key_of_spec`), so it can answer from its own results without asking
the node.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from stager.digest import digest_bytes
from stager.errors import StagerError
from stager.locations import safe_relative_path
from worker_hooks.task.spec import TaskRef, TaskSpec


def task_key(spec: TaskSpec, inputs: Sequence[tuple[str, str]], bundle_identity: str | None) -> str:
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


def key_of_spec(spec: TaskSpec) -> str | None:
    """The key, if the spec alone names the bytes of every input (each one object with
    a digest, a bundle with its digest); None if only the node can tell."""
    inputs = []
    for item in spec.inputs:
        if isinstance(item.source, TaskRef) or item.is_collection or item.digest is None:
            return None
        try:
            path = safe_relative_path(item.path)
        except StagerError:
            return None  # the node refuses it, and says why
        inputs.append((str(path), str(item.digest)))
    bundle = None
    if spec.bundle is not None:
        if spec.bundle.digest is None:
            return None
        bundle = str(spec.bundle.digest)
    return task_key(spec, inputs, bundle)
