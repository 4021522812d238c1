"""The sweep of sandboxes left by dead processes: what it kills, what it spares."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stager.owner import Owner, process_start
from worker_hooks.wrap.sandboxes import OWNER_FILE, RUN_FILE, claim, keep, record_run, sweep


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
        assert sweep(tmp_path).__dict__ == {"sandboxes": 1, "process_groups": 1}
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
        assert sweep(tmp_path).__dict__ == {"sandboxes": 1, "process_groups": 0}
        assert bystander.poll() is None
    finally:
        bystander.kill()
