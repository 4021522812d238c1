"""Task sandboxes: made, reused, and swept when their process died.

A sandbox holds ``work/`` (the command's working directory), ``logs/`` and
``tmp/``. ``stager wrap`` makes one per task and removes it afterwards. A
worker runs thousands of short tasks, and on a cloud VM every file made or
removed costs: it keeps a :class:`SandboxPool`, whose sandboxes are emptied
after a task and given to the next one (nothing is made or removed for a
task that writes nothing).

A wrapper writes who owns a sandbox (``.stager-owner``; for a pool, once,
on the pool's directory) when it makes it, and the command's process group
(``.stager-run``: leader pid and start time) when the command starts. A
worker killed with ``kill -9`` (the OOM killer, an operator) cannot clean
up: its command runs on in its own session, and its sandbox stays on the
scratch disk. The next worker or ``stager wrap`` on the node sweeps: every
sandbox (or pool) whose owner is a dead process of this host has its
recorded process groups killed and is removed. A command also carries its
sandbox in its environment (``STAGER_SANDBOX``), which every process it
starts inherits: the sweep kills those too, which covers an owner killed
after its command started but before it recorded the group.
A sandbox kept on purpose (``--keep-failed``) has no owner file and stays.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from stager.owner import Owner, process_start
from worker_hooks.wrap.bundle import remove_tree
from worker_hooks.wrap.environment import SANDBOX_VARIABLE

OWNER_FILE = ".stager-owner"
RUN_FILE = ".stager-run"
PARTS = ("work", "logs", "tmp")
LOGS = frozenset({"stdout", "stderr"})


def make_sandbox(parent: Path, prefix: str) -> Path:
    """A new sandbox (``work/``, ``logs/``, ``tmp/``) in ``parent``."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    for part in PARTS:
        (root / part).mkdir()
    return root


class SandboxPool:
    """One process's sandboxes, kept for reuse: at most ``size`` wait for a task.

    They live in one directory that the process owns (swept as a whole once it
    died). A sandbox given back is emptied of everything its task left, and is
    made anew if anything in it looks odd (a part replaced by a link, a log file
    with other names, a folder it may not write).
    """

    def __init__(self, sandbox_dir: Path, size: int) -> None:
        self.sandbox_dir = sandbox_dir
        self.size = size
        self._root: Path | None = None
        self._free: list[Path] = []
        self._lock = threading.Lock()

    def take(self) -> Path:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._root is None:
                self.sandbox_dir.mkdir(parents=True, exist_ok=True)
                self._root = Path(tempfile.mkdtemp(prefix="pool.", dir=self.sandbox_dir))
                claim(self._root)
            root = self._root
        return make_sandbox(root, "s.")

    def give_back(self, sandbox: Path) -> None:
        with self._lock:
            wanted = len(self._free) < self.size
        if wanted and _emptied(sandbox):
            with self._lock:
                self._free.append(sandbox)
        else:
            remove_tree(sandbox)

    def keep(self, sandbox: Path, name: str) -> Path:
        """Take ``sandbox`` out of the pool for a person to look at (no sweep removes it)."""
        kept = self.sandbox_dir / f"{name}.{secrets.token_hex(3)}"
        sandbox.rename(kept)
        return kept

    def close(self) -> None:
        with self._lock:
            root, self._root, self._free = self._root, None, []
        if root is not None:
            remove_tree(root)


def _emptied(sandbox: Path) -> bool:
    """Empty what a task left in ``sandbox``; False if it is not fit to be reused."""
    try:
        found = set()
        for entry in os.scandir(sandbox):
            if entry.name in PARTS and _plain_folder(entry):
                found.add(entry.name)
                for inner in os.scandir(entry.path):
                    if not (entry.name == "logs" and inner.name in LOGS and _own_file(inner)):
                        remove_tree(Path(inner.path))
            elif entry.name != RUN_FILE:
                remove_tree(Path(entry.path))
        return found == set(PARTS)
    except OSError:
        return False


def _plain_folder(entry: os.DirEntry[str]) -> bool:
    info = entry.stat(follow_symlinks=False)
    return stat.S_ISDIR(info.st_mode) and info.st_mode & 0o700 == 0o700


def _own_file(entry: os.DirEntry[str]) -> bool:
    """A regular file no other name points to (truncating it touches nothing else)."""
    info = entry.stat(follow_symlinks=False)
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def claim(sandbox: Path) -> None:
    """Mark ``sandbox`` as this process's."""
    (sandbox / OWNER_FILE).write_text(str(Owner.current()))


RUN_RECORD_BYTES = 64


def record_run(sandbox: Path, pid: int) -> None:
    """Remember the process group the command leads (its pid and start time).

    Written over the last one in place, at a fixed width: a reused sandbox's
    file never shrinks, so nothing is freed or allocated (which costs on a VM).
    """
    text = f"{pid} {process_start(pid) or '-'}".encode().ljust(RUN_RECORD_BYTES - 1) + b"\n"
    fd = os.open(sandbox / RUN_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, text, 0)
    finally:
        os.close(fd)


def keep(sandbox: Path) -> None:
    """Leave ``sandbox`` for a person to look at: no sweep removes it."""
    with contextlib.suppress(FileNotFoundError):
        (sandbox / OWNER_FILE).unlink()


@dataclass(frozen=True)
class Swept:
    sandboxes: int
    process_groups: int  # recorded groups killed
    processes: int  # other processes killed, found by the sandbox in their environment


def sweep(sandbox_dir: Path) -> Swept:
    """Kill the commands and remove the sandboxes of dead owners on this host."""
    if not sandbox_dir.is_dir():
        return Swept(0, 0, 0)
    dead = [sandbox for sandbox in sandbox_dir.iterdir() if _owner_died(sandbox)]
    groups = 0
    for sandbox in dead:
        groups += _kill_recorded_group(sandbox)
        with contextlib.suppress(OSError):  # a pool: each of its sandboxes
            groups += sum(
                _kill_recorded_group(Path(e.path)) for e in os.scandir(sandbox) if e.is_dir()
            )
    processes = _kill_marked(dead) if dead else 0
    for sandbox in dead:
        remove_tree(sandbox)
    return Swept(len(dead), groups, processes)


def _owner_died(sandbox: Path) -> bool:
    try:
        owner = Owner.parse((sandbox / OWNER_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return False  # kept on purpose, being made right now, or not a sandbox
    # None: alive, or on another host (a shared disk), so not ours to judge.
    return owner is not None and owner.is_alive() is False


MARKED_PASSES = 5  # a process forked while we looked is found by the next pass
MARKER = os.fsencode(SANDBOX_VARIABLE) + b"="


def _kill_marked(dead: list[Path]) -> int:
    """SIGKILL every process whose ``STAGER_SANDBOX`` lies in one of the ``dead`` sandboxes.

    The path names a sandbox made under a random name by a process now dead, so
    no process of anyone else's carries it.
    """
    prefixes = tuple(os.fsencode(sandbox.absolute()) + b"/" for sandbox in dead)
    killed: set[int] = set()  # a killed process stays readable until it is reaped
    for _ in range(MARKED_PASSES):
        found = [pid for pid in _pids() if pid not in killed and _marked(pid, prefixes)]
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed.update(found)
        if not found:
            break
    return len(killed)


def _pids() -> list[int]:
    me = os.getpid()
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != me]


def _marked(pid: int, prefixes: tuple[bytes, ...]) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return False  # gone, or not ours to read
    for entry in environ.split(b"\0"):
        if entry.startswith(MARKER):
            return entry[len(MARKER) :].startswith(prefixes)
    return False


def _kill_recorded_group(sandbox: Path) -> int:
    """SIGKILL the recorded process group if it can still be ours; 1 if signalled."""
    try:
        pid_text, start = (sandbox / RUN_FILE).read_text().split()
        pgid = int(pid_text)
    except (OSError, ValueError):
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
