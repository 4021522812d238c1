"""``stager logs --tail N``: the last lines of a log, whatever its last line ends with."""

from __future__ import annotations

from worker_hooks.inspect.cli import last_lines


def test_the_last_lines_of_a_log() -> None:
    log = b"one\ntwo\r\nthree"  # a command killed mid-line leaves no newline
    assert last_lines(log, None) == log
    assert last_lines(log, 1) == b"three"
    assert last_lines(log, 2) == b"two\r\nthree"
    assert last_lines(log, 10) == log
    assert last_lines(log, 0) == b""
    assert last_lines(b"", 3) == b""
