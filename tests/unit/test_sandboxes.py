"""The sweep of sandboxes left by dead processes: what it kills, what it spares."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stager.owner import Owner, process_start
from worker_hooks.wrap.sandboxes import (
    OWNER_FILE,
    RUN_FILE,
    SandboxPool,
    claim,
    keep,
    record_run,
    sweep,
)


def dead_owner() -> str:
    me = Owner.current()
    return str(Owner(me.host, me.pid, "not-my-start-time", "x"))  # same pid, other process


def sandbox(root: Path, name: str, owner: str | None) -> Path:
    path = root / name
    (path / "work").mkdir(parents=True)
    if owner is not None:
        (path / OWNER_FILE).write_text(owner)
    return path


def test_a_dead_owners_sandbox_goes_and_its_group_is_killed(tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        left = sandbox(tmp_path, "t1.abc", dead_owner())
        record_run(left, orphan.pid)
        assert sweep(tmp_path).__dict__ == {"sandboxes": 1, "process_groups": 1, "processes": 0}
        assert orphan.wait(timeout=10) == -9
        assert not left.exists()
    finally:
        orphan.kill()


def test_live_kept_and_unknown_sandboxes_are_spared(tmp_path: Path) -> None:
    mine = sandbox(tmp_path, "mine", None)
    claim(mine)  # this (live) process owns it
    kept = sandbox(tmp_path, "kept", dead_owner())
    keep(kept)  # --keep-failed
    foreign = sandbox(tmp_path, "foreign", str(Owner("other-host", 1, "1", "n")))
    stranger = sandbox(tmp_path, "stranger", None)
    assert sweep(tmp_path).sandboxes == 0
    assert all(p.exists() for p in (mine, kept, foreign, stranger))


def test_a_recycled_pid_is_not_killed(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        left = sandbox(tmp_path, "t2.def", dead_owner())
        # The recorded leader had this pid but another start time: not ours any more.
        assert process_start(bystander.pid) is not None
        (left / RUN_FILE).write_text(f"{bystander.pid} 1\n")
        assert sweep(tmp_path).__dict__ == {"sandboxes": 1, "process_groups": 0, "processes": 0}
        assert bystander.poll() is None
    finally:
        bystander.kill()


def test_a_pool_reuses_a_sandbox_emptied_of_what_its_task_left(tmp_path: Path) -> None:
    pool = SandboxPool(tmp_path, size=1)
    first = pool.take()
    assert sorted(p.name for p in first.iterdir()) == ["logs", "tmp", "work"]
    record_run(first, os.getpid())
    (first / "logs" / "stdout").write_bytes(b"old log")
    (first / "work" / "deep" / "er").mkdir(parents=True)
    (first / "work" / "deep" / "er" / "f").write_bytes(b"x")
    (first / "work" / "ro").mkdir()
    (first / "work" / "ro").chmod(0o500)  # a folder the task left read-only
    (first / "tmp" / "t").write_bytes(b"x")
    (first / "stray").write_bytes(b"x")  # beside the parts
    pool.give_back(first)
    again = pool.take()
    assert again == first  # the same folder, as new
    assert sorted(p.name for p in again.iterdir()) == sorted([".stager-run", "logs", "tmp", "work"])
    assert list((again / "work").iterdir()) == [] and list((again / "tmp").iterdir()) == []
    assert pool.take() != again  # none free: another is made


def test_a_sandbox_a_task_tampered_with_is_made_anew_and_nothing_outside_is_touched(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    pool = SandboxPool(tmp_path / "sandboxes", size=2)
    linked, hard = pool.take(), pool.take()
    shutil.rmtree(linked / "work")
    (linked / "work").symlink_to(outside)  # emptying "work" must not follow this
    os.link(outside / "precious", hard / "logs" / "stdout")  # truncating it would hurt
    pool.give_back(linked)
    pool.give_back(hard)
    assert (outside / "precious").read_bytes() == b"keep me"
    assert not linked.exists()  # not fit for reuse: removed
    assert hard.exists() and not (hard / "logs" / "stdout").exists()  # the link is gone
    pool.close()
    assert not (tmp_path / "sandboxes").exists() or not any((tmp_path / "sandboxes").iterdir())


def test_the_pool_of_a_dead_worker_is_swept_with_the_commands_its_sandboxes_ran(
    tmp_path: Path,
) -> None:
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        pool_dir = sandbox(tmp_path, "pool.xyz", dead_owner())
        inner = pool_dir / "s.abc"
        (inner / "work").mkdir(parents=True)
        record_run(inner, orphan.pid)
        assert sweep(tmp_path).__dict__ == {"sandboxes": 1, "process_groups": 1, "processes": 0}
        assert orphan.wait(timeout=10) == -9
        assert not pool_dir.exists()
    finally:
        orphan.kill()


def test_a_command_started_before_its_group_was_recorded_is_found_by_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner was killed after the command started and before record_run: no
    # run file, but the command and its children carry their sandbox.
    pool_dir = sandbox(tmp_path, "pool.xyz", dead_owner())
    inner = pool_dir / "s.abc"
    (inner / "work").mkdir(parents=True)
    marked = {**os.environ, "STAGER_SANDBOX": str(inner / "work")}
    # A live sandbox whose name starts like the dead one's is not inside it.
    neighbour = {**os.environ, "STAGER_SANDBOX": f"{pool_dir}x/s.abc/work"}
    orphan = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], env=marked, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "30"], env=neighbour, start_new_session=True)
    try:
        monkeypatch.chdir(
            tmp_path.parent
        )  # the sweep given a relative path finds the same sandboxes
        swept = sweep(Path(tmp_path.name))
        assert swept.__dict__ == {"sandboxes": 1, "process_groups": 0, "processes": 2}
        assert orphan.wait(timeout=10) == -9
        assert bystander.poll() is None
        assert not pool_dir.exists()
    finally:
        orphan.kill()
        bystander.kill()
