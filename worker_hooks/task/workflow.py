"""Workflows: task specs whose inputs may name other tasks' outputs.

An input ``source`` of the form ``task://<producer id>/<sandbox path>``
names the file the producer declared at that path. A task with such inputs
is ready once every producer has committed; its references are then
replaced by the producer's recorded location, digest and size
(:meth:`~worker_hooks.task.spec.TaskSpec.resolved`), so the worker stages
them like any input.

A workflow file (JSON, or YAML by extension; docs/workflows.md) is::

    {"name": "run1", "defaults": {...spec fields...}, "tasks": [{...spec...}, ...]}

``defaults`` are merged under each task (a task's own fields win; ``env``
is merged key by key).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stager.errors import ConfigError
from worker_hooks.task.documents import load_document
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.spec import TaskSpec

HINT = "fix the workflow; its format is in docs/workflows.md"


def check_batch(
    specs: Sequence[TaskSpec], known: Callable[[Sequence[str]], set[str]] = lambda ids: set()
) -> None:
    """Check every task, unique ids, and dependencies on known or listed tasks.

    A dependency must name a task in this batch or one already submitted
    (``known`` returns which of the ids it is given are); a cycle within the
    batch is refused.
    """
    ids = [spec.id for spec in specs]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ConfigError(f"task id {duplicates[0]} is used twice in the workflow", hint=HINT)
    in_batch = set(ids)
    known_ids = known(sorted({p for spec in specs for p in spec.producers} - in_batch))
    for spec in specs:
        unknown = sorted(spec.producers - in_batch - known_ids)
        if unknown:
            raise ConfigError(
                f"task {spec.id} depends on unknown task {unknown[0]}",
                hint="submit its producer in the same workflow or before it",
            )
    _refuse_cycles({spec.id: spec.producers & in_batch for spec in specs})


def _refuse_cycles(edges: Mapping[str, frozenset[str]]) -> None:
    done: set[str] = set()
    for start in edges:
        path: list[str] = []
        stack: list[tuple[str, bool]] = [(start, False)]
        on_path: set[str] = set()
        while stack:
            node, leaving = stack.pop()
            if leaving:
                on_path.discard(node)
                path.pop()
                done.add(node)
                continue
            if node in done:
                continue
            if node in on_path:
                raise ConfigError(
                    f"the workflow has a dependency cycle through task {node}", hint=HINT
                )
            on_path.add(node)
            path.append(node)
            stack.append((node, True))
            stack.extend((producer, False) for producer in edges.get(node, ()))


def workflow_tasks(document: Any, where: str) -> tuple[str | None, list[TaskSpec]]:
    """The workflow's name (if it gives one) and its checked tasks, defaults merged in.

    ``document`` holds a workflow (an object with ``tasks``), a list of task
    specs or one task spec; errors name ``where`` (the file).
    """
    if isinstance(document, list):
        document = {"tasks": document}
    elif isinstance(document, dict) and "tasks" not in document and "id" in document:
        document = {"tasks": [document]}
    if not isinstance(document, dict) or not isinstance(document.get("tasks"), list):
        raise ConfigError(
            f"{where}: expected a workflow (an object with a 'tasks' list), a list of task "
            "specs or one task spec",
            hint="see docs/workflows.md",
        )
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(defaults.get("env") or {}, dict):
        raise ConfigError(f"{where}: 'defaults' must be an object (and its env too)", hint=HINT)
    specs = []
    for number, task in enumerate(document["tasks"]):
        if not isinstance(task, dict) or not isinstance(task.get("env") or {}, dict):
            raise ConfigError(
                f"{where}: task {number} must be an object (and its env too)", hint=HINT
            )
        merged = {**defaults, **task}
        env = {**(defaults.get("env") or {}), **(task.get("env") or {})}
        if env:
            merged["env"] = env
        specs.append(parse_spec(merged))
    name = document.get("name")
    return (str(name) if name else None), specs


def load_workflow(path: Path) -> tuple[str, list[TaskSpec]]:
    """The workflow in ``path`` (named after the file unless it names itself)."""
    name, specs = workflow_tasks(load_document(path), str(path))
    return name or path.stem, specs
