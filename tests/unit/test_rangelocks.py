"""A scratch root's locks: bytes of one file, locked by the kernel (fsd.rangelocks)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fsd import rangelocks
from fsd.cache import NodeCache
from fsd.pins import RangePins
from fsd.rangelocks import LockTable, RangeLock, offset_of
from stager.digest import digest_bytes
from stager.errors import LockTimeoutError, StagerError

REPO = Path(__file__).parents[2]

_HOLD = """
import sys, time
from pathlib import Path
from fsd.pins import RangePins
from fsd.rangelocks import LockTable, RangeLock, offset_of
lock = RangeLock(LockTable(Path(sys.argv[1])), sys.argv[2])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_another_process_holds_the_lock_until_it_is_killed(tmp_path: Path) -> None:
    table = LockTable(tmp_path / "table")
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "table"), "entry-a"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        lock = RangeLock(table, "entry-a")
        assert lock.busy()
        with pytest.raises(LockTimeoutError):
            lock.acquire(timeout_s=0.1)
        other = RangeLock(table, "entry-b")  # another name: another byte
        assert not other.busy()
        with other.holding():
            assert other.busy()
    finally:
        child.kill()
        child.wait()
    with lock.holding(timeout_s=5):  # a dead process holds nothing
        assert lock.held
    assert not lock.busy()
    assert sorted(os.listdir(tmp_path)) == ["table"]  # taking locks made no file


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    table = LockTable(tmp_path / "table")
    inside, most = [0], [0]

    def work() -> None:
        for _ in range(200):
            with RangeLock(table, "shared").holding():
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


def test_a_forked_child_takes_locks_of_its_own(tmp_path: Path) -> None:
    """After a fork the child opens the table anew: its locks exclude its parent's."""
    table = LockTable(tmp_path / "table")
    with RangeLock(table, "x").holding():
        pid = os.fork()
        if pid == 0:  # the child: the parent holds "x", so the child cannot take it
            os._exit(0 if not RangeLock(table, "x").try_acquire() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_table_is_open_only_while_something_is_held(tmp_path: Path) -> None:
    """A cache dropped leaves no open file behind (a small disk can be unmounted)."""
    table = LockTable(tmp_path / "table")

    def open_here() -> int:
        return sum(
            os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path / "table")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        )

    lock = RangeLock(table, "x")
    with lock.holding():
        assert open_here() == 1
        with RangeLock(table, "y").holding():
            assert open_here() == 1  # one file for all of them
        assert lock.busy() and open_here() == 1
    assert not lock.busy()
    assert open_here() == 0


def test_a_file_system_without_these_locks_gets_link_locks_and_pin_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system refuses open file description locks (some FUSE ones),
    a scratch root locks and pins with files, as a shared root does."""

    def refuse(*_: object) -> bytes:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(rangelocks.fcntl, "fcntl", refuse)
    assert not rangelocks.usable(tmp_path / "probe")
    cache = NodeCache(tmp_path / "c", quota_bytes=1000)
    digest = digest_bytes(b"x")
    with cache.pinned([digest]):
        assert [p.name.split(".")[0] for p in (tmp_path / "c" / "pins").iterdir()] == [digest.hex]
    cache.ensure(digest, 1, lambda writer: writer.write(b"x"))  # link locks take it
    assert cache.lookup(digest) is not None


def test_other_errors_of_the_probe_are_not_taken_for_a_missing_feature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(rangelocks.fcntl, "fcntl", broken)
    with pytest.raises(StagerError, match="Input/output error"):
        rangelocks.usable(tmp_path / "probe")


def test_pins_are_counted_and_a_failed_pin_takes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = RangePins(LockTable(tmp_path / "pins"))
    twice = pins.add(["aa", "aa", "bb"])  # one input twice in a task
    other = pins.add(["aa"])
    pins.remove(twice)
    assert pins.pinned()("aa") and not pins.pinned()("bb")
    pins.remove(other)
    assert not pins.pinned()("aa")
    real = LockTable.share

    def refuse_cc(table: LockTable, offset: int) -> None:
        if offset == offset_of("cc"):
            raise StagerError("refused")
        real(table, offset)

    monkeypatch.setattr(LockTable, "share", refuse_cc)
    with pytest.raises(StagerError, match="refused"):
        pins.add(["aa", "bb", "cc"])
    assert not pins.pinned()("aa") and not pins.pinned()("bb")
