"""Finding a task's outputs: sizes of plain files, links judged by where they lead."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from stager.errors import MissingOutputError, UnsafePathError
from stager.locations import S3Url
from worker_hooks.task.parse import parse_spec
from worker_hooks.task.spec import OutputSpec
from worker_hooks.wrap.outputs import find_outputs


def outputs(*paths: str) -> list[OutputSpec]:
    body = {
        "id": "t",
        "command": ["true"],
        "outputs": [{"path": p, "to": "s3://bkt/out/"} for p in paths],
        "results": "s3://bkt/results/",
    }
    return list(parse_spec(body).outputs)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_plain_files_and_folders_give_their_sizes_and_keys(sandbox: Path) -> None:
    (sandbox / "out.txt").write_bytes(b"12345")
    (sandbox / "deep" / "er").mkdir(parents=True)
    (sandbox / "deep" / "er" / "a b ü.dat").write_bytes(b"")
    (sandbox / "deep" / "er" / "c.dat").write_bytes(b"xyz")
    found = find_outputs(sandbox, outputs("out.txt", "deep/"))
    assert [(f.relative, f.size, f.url) for f in found] == [
        ("out.txt", 5, S3Url("bkt", "out/out.txt")),
        ("deep/er/a b ü.dat", 0, S3Url("bkt", "out/er/a b ü.dat")),
        ("deep/er/c.dat", 3, S3Url("bkt", "out/er/c.dat")),
    ]


def test_a_link_that_stays_inside_the_sandbox_is_followed(sandbox: Path) -> None:
    (sandbox / "real").mkdir()
    (sandbox / "real" / "out.txt").write_bytes(b"inside")
    (sandbox / "via").symlink_to("real")
    (sandbox / "alias.txt").symlink_to("real/out.txt")
    found = find_outputs(sandbox, outputs("via/out.txt", "alias.txt"))
    assert [(f.relative, f.size) for f in found] == [("via/out.txt", 6), ("alias.txt", 6)]


def test_a_link_out_of_the_sandbox_is_refused_wherever_it_lies(
    sandbox: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    (sandbox / "leak.txt").symlink_to(outside / "secret")
    (sandbox / "folder").symlink_to(outside)
    for declared in ("leak.txt", "folder/secret"):
        with pytest.raises(UnsafePathError, match="outside the sandbox"):
            find_outputs(sandbox, outputs(declared))


def test_missing_dangling_and_odd_outputs_are_named(sandbox: Path) -> None:
    (sandbox / "dangling").symlink_to("nowhere")
    (sandbox / "folder.txt").mkdir()
    os.mkfifo(sandbox / "pipe")
    with pytest.raises(MissingOutputError, match=r"did not write output out\.txt"):
        find_outputs(sandbox, outputs("out.txt"))
    with pytest.raises(MissingOutputError, match=r"did not write output sub/out\.txt"):
        find_outputs(sandbox, outputs("sub/out.txt"))
    for odd in ("dangling", "folder.txt", "pipe"):
        refused = f"output {re.escape(odd)} is not a regular file"
        with pytest.raises(MissingOutputError, match=refused):
            find_outputs(sandbox, outputs(odd))
