"""Tasks mapped over a collection: a template run once per file a producer made.

A task with an ``each`` input (``task://<producer>/<dir>/`` or a glob over
the producer's outputs) is a *template*: how many files it covers is known
only once the producer has run (a dynamic fan-out). When its producers have
committed, the dispatcher resolves the collection and makes one *member* per
file, sorted by path:

- its id is ``<template id>.<n>`` (n from 0);
- the file is staged at the ``each`` input's path, and ``STAGER_ITEM``
  holds its path below the collection (``part-03.txt``);
- every output goes below ``<to><item>/``, so members never write one key.

The template is done when every member is (and fails when one does). Its
result records each member's outputs below a folder named after the
member's item, so ``task://<template>/*/n.txt`` is a fan-in over all of them,
staged as ``<path>/<item>/n.txt``. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from worker_hooks.task.result import ResultManifest
from worker_hooks.task.spec import OutputKind, TaskSpec

ITEM_VARIABLE = "STAGER_ITEM"
MAX_TEMPLATE_ID = 100  # leaves room for ".<n>" within the 128 characters of an id


@dataclass(frozen=True)
class Member:
    item: str  # the file's path below the collection
    spec: TaskSpec


def member_id(template: str, number: int) -> str:
    return f"{template}.{number}"


def is_member_id(task_id: str, template: str) -> bool:
    """Whether ``task_id`` is of the form the members of ``template`` take."""
    return re.fullmatch(re.escape(template) + r"\.[0-9]+", task_id) is not None


def members(template: TaskSpec, submitted: TaskSpec) -> list[Member]:
    """The members of ``template``, whose collection is resolved (one ``each`` input per
    file); ``submitted`` is the template as written (where its ``each`` input goes)."""
    (each,) = [item for item in submitted.inputs if item.each]
    below = each.path + "/"
    files = sorted((item for item in template.inputs if item.each), key=lambda item: item.path)
    others = tuple(item for item in template.inputs if not item.each)
    found = []
    for number, item in enumerate(files):
        name = item.path[len(below) :]
        spec = replace(
            template,
            id=member_id(template.id, number),
            env={**template.env, ITEM_VARIABLE: name},
            inputs=(*others, replace(item, path=each.path, each=False)),
            outputs=tuple(replace(o, to=o.to.child(f"{name}/")) for o in template.outputs),
        )
        found.append(Member(name, spec))
    return found


def group_result(template: str, done: Sequence[tuple[str, ResultManifest]]) -> ResultManifest:
    """The template's result: every member's outputs, each below ``<item>/``."""
    return ResultManifest(
        task_id=template,
        task_key=f"members:{len(done)}",
        command=(),
        exit_code=0,
        host="",
        started_at="",
        outputs=tuple(
            replace(record, path=f"{item}/{record.path}")
            for item, result in done
            for record in result.outputs
        ),
    )


def as_producer(spec: TaskSpec) -> TaskSpec:
    """What a consumer may name of ``spec``: a template's outputs sit below one folder
    per member, whose name is not known before it runs."""
    if not spec.mapped:
        return spec

    def below_members(path: str, kind: OutputKind) -> str:
        return f"*/{path}*" if kind is OutputKind.DIR else f"*/{path}"

    return replace(
        spec,
        outputs=tuple(replace(o, path=below_members(o.path, o.kind)) for o in spec.outputs),
    )
