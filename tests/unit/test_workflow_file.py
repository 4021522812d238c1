"""A large workflow file read a task at a time: the same tasks, checks and order as
reading it whole, in parts, without holding every task."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from stager.errors import ConfigError
from worker_hooks.task.documents import load_document
from worker_hooks.task.workflow import check_batch, submit_order, workflow_tasks
from worker_hooks.task.workflowfile import STREAM_FROM_BYTES, read_workflow_file, streamed


def mapper(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"map-{n}",
        "command": ["cp", "in.txt", "part.txt"],
        "inputs": [{"source": f"s3://bkt/in/{n}.txt", "path": "in.txt"}],
        "outputs": [{"path": "part.txt", "to": f"s3://bkt/parts/{n}.txt"}],
        **extra,
    }


REDUCE = {
    "id": "reduce",
    "command": ["sh", "-c", "cat parts/*/part.txt > sum.txt"],
    "inputs": [{"source": "task://map-*/part.txt", "path": "parts/"}],
    "outputs": [{"path": "sum.txt", "to": "s3://bkt/sum.txt"}],
}
REPORT = {
    "id": "report",
    "command": ["wc", "sum.txt"],
    "inputs": [{"source": "task://reduce/sum.txt", "path": "sum.txt"}],
}


def written(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def sent(path: Path, per_part: int) -> list[list[str]]:
    return [[spec.id for spec in part] for part in read_workflow_file(path).parts(per_part)]


def test_the_tasks_are_those_of_the_whole_file_in_its_order_and_in_parts(tmp_path: Path) -> None:
    # Keys in any order: the defaults come after the tasks they apply to.
    document = {
        "tasks": [mapper(n) for n in range(5)] + [REDUCE, REPORT],
        "defaults": {"results": "s3://bkt/results/", "env": {"LANG": "C"}},
        "name": "fan-in",
    }
    path = written(tmp_path / "flow.json", document)
    name, whole = workflow_tasks(load_document(path), str(path))
    big = read_workflow_file(path)
    assert (big.name, len(big)) == (name, 7)
    parts = list(big.parts(3))
    assert [len(p) for p in parts] == [3, 3, 1]
    assert [spec for part in parts for spec in part] == submit_order(whole) == whole
    assert parts[2][0].inputs[0].source.producer == "reduce"  # type: ignore[union-attr]
    assert whole[0].env == {"LANG": "C"}


def test_a_task_listed_before_its_producer_waits_for_it(tmp_path: Path) -> None:
    tasks = [REPORT, REDUCE, *(mapper(n) for n in range(3)), mapper(9, inputs=[])]
    document = {"defaults": {"results": "s3://bkt/results/"}, "tasks": tasks}
    path = written(tmp_path / "backwards.json", document)
    order = [i for part in sent(path, 2) for i in part]
    assert sorted(order) == sorted(t["id"] for t in tasks)
    assert (
        order.index("report")
        > order.index("reduce")
        > max(order.index(f"map-{n}") for n in range(3))
    )
    _, whole = workflow_tasks(load_document(path), str(path))
    assert order == [spec.id for spec in submit_order(whole)]


def test_a_list_of_task_specs_is_a_workflow_named_after_its_file(tmp_path: Path) -> None:
    path = written(tmp_path / "plain.json", [mapper(n, results="s3://bkt/r/") for n in range(3)])
    big = read_workflow_file(path)
    assert big.name == "plain"
    assert sent(path, 10) == [["map-0", "map-1", "map-2"]]


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"tasks": [mapper(0)], "defualts": {}}, "unknown key 'defualts'"),
        ({"name": "x"}, "expected a workflow"),
        ({"tasks": {"id": "a"}}, "expected a workflow"),
        ({"tasks": "all of them"}, "expected a workflow"),
        (
            {"tasks": [mapper(0, results="s3://bkt/r/"), {**REPORT, "results": "s3://bkt/r/"}]},
            "names unknown task reduce",
        ),
        (
            {
                "defaults": {"results": "s3://bkt/r/"},
                "tasks": [
                    mapper(0),
                    {**REPORT, "inputs": [{"source": "task://map-0/x", "path": "x"}]},
                ],
            },
            "which task map-0 does not declare",
        ),
        (
            {"defaults": {"results": "s3://bkt/r/"}, "tasks": [mapper(0), mapper(0)]},
            "task id map-0 is used twice",
        ),
        (
            {
                "defaults": {"results": "s3://bkt/r/"},
                "tasks": [
                    {
                        **REPORT,
                        "id": "a",
                        "inputs": [{"source": "task://b/o", "path": "o"}],
                        "outputs": [{"path": "o", "to": "s3://bkt/a"}],
                    },
                    {
                        **REPORT,
                        "id": "b",
                        "inputs": [{"source": "task://a/o", "path": "o"}],
                        "outputs": [{"path": "o", "to": "s3://bkt/b"}],
                    },
                ],
            },
            "dependency cycle",
        ),
        (
            {"tasks": [*(mapper(n) for n in range(3)), {"id": "late", "command": "true"}]},
            "command must be",
        ),
    ],
)
def test_a_mistake_anywhere_is_refused_before_a_part_is_read(
    tmp_path: Path, document: Any, says: str
) -> None:
    path = written(tmp_path / "bad.json", document)
    with pytest.raises(ConfigError, match=says):
        read_workflow_file(path)
    with pytest.raises(ConfigError, match=says):  # the same refusal as checking it whole
        check_batch(workflow_tasks(load_document(path), str(path))[1])


def test_broken_json_and_a_file_that_changes_meanwhile_are_one_line_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flow.json"
    path.write_text('{"tasks": [{"id": "a", "command": ["true"]')
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_workflow_file(path)
    document = {"defaults": {"results": "s3://bkt/r/"}, "tasks": [mapper(n) for n in range(4)]}
    written(path, document)
    big = read_workflow_file(path)
    written(path, {**document, "tasks": document["tasks"][:3]})
    with pytest.raises(ConfigError, match="changed while it was being submitted"):
        list(big.parts(10))
    with pytest.raises(ConfigError, match="cannot read"):
        read_workflow_file(tmp_path / "missing.json")


def test_reading_in_parts_holds_a_fraction_of_what_reading_whole_does(tmp_path: Path) -> None:
    env = {f"V{n}": "x" * 40 for n in range(20)}
    document = {
        "defaults": {"results": "s3://bkt/r/"},
        "tasks": [
            mapper(
                n,
                env=env,
                inputs=[
                    {"source": f"s3://bkt/in/{n}/{k}.txt", "path": f"{k}.txt"} for k in range(8)
                ],
            )
            for n in range(1000)
        ],
    }
    path = written(tmp_path / "large.json", document)
    del document

    def peak(read: Any) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole = peak(lambda: workflow_tasks(load_document(path), str(path)))
    parts = peak(lambda: [len(part) for part in read_workflow_file(path).parts(100)])
    # Read whole: the decoded file and every task (here 4.3 times as much). In parts:
    # an outline of each task (its id) and one part's tasks at a time.
    assert parts * 3 < whole, (parts, whole)


def test_only_large_json_files_are_read_in_parts(tmp_path: Path) -> None:
    small = written(tmp_path / "small.json", {"tasks": [mapper(0, results="s3://bkt/r/")]})
    large = tmp_path / "large.json"
    large.write_text(small.read_text() + " " * STREAM_FROM_BYTES)
    yaml = tmp_path / "large.yaml"
    yaml.write_text(large.read_text())
    assert [streamed(p) for p in (small, large, yaml, tmp_path / "gone.json")] == [
        False,
        True,
        False,
        False,
    ]
    assert sent(large, 10) == [["map-0"]]
