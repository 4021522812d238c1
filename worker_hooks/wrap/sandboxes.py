"""Sandboxes left by dead processes: found, their commands killed, removed.

A wrapper writes who owns a sandbox (``.stager-owner``) when it makes it,
and the command's process group (``.stager-run``: leader pid and start
time) when the command starts. A worker killed with ``kill -9`` (the OOM
killer, an operator) cannot clean up: its command runs on in its own
session, and its sandbox stays on the scratch disk. The next worker or
``stager wrap`` on the node sweeps: every sandbox whose owner is a dead
process of this host has its recorded process group killed and is removed.
A sandbox kept on purpose (``--keep-failed``) has no owner file and stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from stager.owner import Owner, process_start
from worker_hooks.wrap.bundle import remove_tree

OWNER_FILE = ".stager-owner"
RUN_FILE = ".stager-run"


def claim(sandbox: Path) -> None:
    """Mark ``sandbox`` as this process's."""
    (sandbox / OWNER_FILE).write_text(str(Owner.current()))


def record_run(sandbox: Path, pid: int) -> None:
    """Remember the process group the command leads (its pid and start time)."""
    (sandbox / RUN_FILE).write_text(f"{pid} {process_start(pid) or '-'}\n")


def keep(sandbox: Path) -> None:
    """Leave ``sandbox`` for a person to look at: no sweep removes it."""
    with contextlib.suppress(FileNotFoundError):
        (sandbox / OWNER_FILE).unlink()


@dataclass(frozen=True)
class Swept:
    sandboxes: int
    process_groups: int


def sweep(sandbox_dir: Path) -> Swept:
    """Kill the commands and remove the sandboxes of dead owners on this host."""
    sandboxes = groups = 0
    if not sandbox_dir.is_dir():
        return Swept(0, 0)
    for sandbox in sandbox_dir.iterdir():
        try:
            owner = Owner.parse((sandbox / OWNER_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError):
            continue  # kept on purpose, being made right now, or not a sandbox
        if owner is None or owner.is_alive() is not False:
            continue  # alive, or on another host (a shared disk): not ours to judge
        groups += _kill_recorded_group(sandbox)
        remove_tree(sandbox)
        sandboxes += 1
    return Swept(sandboxes, groups)


def _kill_recorded_group(sandbox: Path) -> int:
    """SIGKILL the recorded process group if it can still be ours; 1 if signalled."""
    try:
        pid_text, start = (sandbox / RUN_FILE).read_text().split()
        pgid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return 0  # the owner died before its command started
    current = process_start(pgid)
    if current is not None and current != start:
        return 0  # that pid now names another process, so no group of ours has this id
    # A process group keeps its id reserved while any member lives: with the
    # leader gone, the id can only be our leftover group's.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return 0
    return 1
