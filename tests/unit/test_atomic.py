import array
import errno
import os
import sys
from pathlib import Path

import pytest

from stager import atomic
from stager.atomic import atomic_file
from stager.errors import DiskFullError, LocalIOError, from_os_error
from tests.helpers import files_under


def test_publishes_only_on_clean_exit(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.bin"
    with atomic_file(final) as handle:
        handle.write(b"complete")
        assert not final.exists()
    assert final.read_bytes() == b"complete"
    assert files_under(tmp_path) == [final]


def test_a_refused_file_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_file(final) as handle:
        handle.write(b"partial")
        raise RuntimeError("digest mismatch")
    assert files_under(tmp_path) == []


def test_an_existing_file_is_replaced_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(final) as handle:
        handle.write(b"new but broken")
        raise RuntimeError("refused")
    assert final.read_bytes() == b"old"


def test_without_replace_an_existing_file_stays(tmp_path: Path) -> None:
    final = tmp_path / "VERSION"
    with atomic_file(final, replace=False) as handle:
        handle.write(b"first")
    with atomic_file(final, replace=False) as handle:
        handle.write(b"second")
    assert final.read_bytes() == b"first"
    assert files_under(tmp_path) == [final]


def test_os_errors_are_translated(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LocalIOError, match="cannot create"), atomic_file(blocker / "child"):
        pass
    full = from_os_error(OSError(errno.ENOSPC, "No space left on device"), "write /x")
    assert isinstance(full, DiskFullError)
    assert full.exit_code == 9
    assert "No space left" in full.one_line()


def test_a_large_durable_file_is_written_whole_while_its_writeback_starts_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sys.platform == "linux":
        assert atomic._start_writeback is not None  # libc's sync_file_range was found
    kicks: list[tuple[int, int]] = []
    real = atomic._start_writeback

    def recording(fd: int, offset: int, length: int) -> None:
        kicks.append((offset, length))
        if real is not None:
            real(fd, offset, length)

    monkeypatch.setattr(atomic, "_start_writeback", recording)
    data = os.urandom(3 * atomic.WRITE_BEHIND_BYTES + 12345)
    final = tmp_path / "big.bin"
    with atomic_file(final) as handle:
        for start in range(0, len(data), 3 * 1024 * 1024):
            handle.write(memoryview(data)[start : start + 3 * 1024 * 1024])
    assert final.read_bytes() == data
    # 3 MiB writes: a kick after every third write (9 MiB), from where the last ended;
    # the 6 MiB tail is left to the fsync.
    nine = 9 * 1024 * 1024
    assert kicks == [(0, nine), (nine, nine)]


def test_a_file_that_need_not_be_durable_is_written_whole_in_slices_without_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kicks: list[int] = []
    monkeypatch.setattr(atomic, "_start_writeback", lambda fd, offset, length: kicks.append(fd))
    words = array.array("I", range(3 * atomic.WRITE_SLICE_BYTES // 4 + 7))  # not a byte view
    final = tmp_path / "big.bin"
    with atomic_file(final, durable=False) as handle:
        assert handle.write(words) == len(words) * 4
        assert handle.write(b"") == 0
        handle.write(b"tail")
    assert final.read_bytes() == words.tobytes() + b"tail"
    assert kicks == []  # nothing to sync later, so no disk work started early
