"""Running a task's command: its own process group, a timeout, captured logs.

The command starts in a new session, so the timeout (SIGTERM, a grace
period, then SIGKILL) reaches every process it forked, and so do an
interrupt of the wrapper and the clean-up after a normal exit: nothing the
command started outlives it. The group id stays reserved until we reap the
leader, because we wait for its exit without reaping (``WNOWAIT``) and only
then signal the group, so a signal can never hit a recycled id.

stdout and stderr go to files; with ``live`` they are also copied to this
process's own stdout and stderr as they arrive (for a user at a terminal).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from stager.errors import CommandFailedError, LocalIOError, from_os_error

# Why a command could not start that no other node would change.
_NOT_STARTABLE = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR})


@dataclass(frozen=True)
class RunOutcome:
    returncode: int
    timed_out: bool
    duration_s: float
    cancelled: bool = False


def _tee(source: BinaryIO, log: BinaryIO, echo: BinaryIO) -> None:
    for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
        log.write(chunk)
        echo.write(chunk)
        echo.flush()


class _Exited:
    """Whether the child has exited; the child is not reaped until we call wait().

    Watched through a pidfd (no thread); where there is none, a thread waits
    with ``WNOWAIT``.
    """

    def __init__(self, pid: int) -> None:
        self._event: threading.Event | None = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._fd = None
            self._event = threading.Event()
            threading.Thread(target=self._wait, args=(pid,), daemon=True).start()

    def _wait(self, pid: int) -> None:
        assert self._event is not None
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        self._event.set()

    def wait(self, timeout_s: float | None) -> bool:
        """True once the child has exited (within ``timeout_s``; None: no limit)."""
        if self._event is not None:
            return self._event.wait(timeout_s)
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(None if timeout_s is None else max(0, int(timeout_s * 1000))))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _wait_for_exit(
    exited: _Exited, timeout_s: float | None, cancel: threading.Event | None
) -> str | None:
    """Wait for the child; return "timeout" or "cancelled" if that came first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return "timeout"
        step = 0.2 if cancel is not None else None
        waits = [w for w in (step, remaining) if w is not None]
        if exited.wait(min(waits) if waits else None):
            return None
        if cancel is not None and cancel.is_set():
            return "cancelled"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout_s: float | None = None,
    kill_grace_s: float = 5.0,
    live: bool = False,
    cancel: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Run ``argv`` to its end, its timeout or ``cancel``; only a failure to start raises.

    ``on_start`` learns the pid of the command, which leads its own process group.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as logs:
        try:
            out_log = logs.enter_context(stdout_path.open("wb"))
            err_log = logs.enter_context(stderr_path.open("wb"))
        except OSError as exc:
            raise from_os_error(exc, f"create the command's logs in {stdout_path.parent}") from exc
        pipe = subprocess.PIPE if live else None
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=pipe or out_log,
                stderr=pipe or err_log,
                start_new_session=True,
            )
        except OSError as exc:
            # A program that is not there or may not run is the task's own fault (as
            # exit 127 from a shell is): running it elsewhere would not help.
            kind = CommandFailedError if exc.errno in _NOT_STARTABLE else LocalIOError
            raise kind(
                f"cannot start {argv[0]!r}: {exc.strerror or exc}",
                hint="check the command's name, its path in the sandbox and its execute bit",
            ) from exc
        tees: list[threading.Thread] = []
        stopped_by = None
        try:  # from here on, whatever happens, the command's whole group is ended
            if on_start is not None:
                try:
                    on_start(process.pid)
                except OSError as exc:
                    raise from_os_error(exc, "record the command's process group") from exc
            if live:
                assert process.stdout is not None and process.stderr is not None
                for source, log, echo in (
                    (process.stdout, out_log, sys.stdout.buffer),
                    (process.stderr, err_log, sys.stderr.buffer),
                ):
                    tee = threading.Thread(target=_tee, args=(source, log, echo), daemon=True)
                    tee.start()
                    tees.append(tee)
            exited = _Exited(process.pid)
            try:
                stopped_by = _wait_for_exit(exited, timeout_s, cancel)
                if stopped_by is not None:
                    _signal_group(process.pid, signal.SIGTERM)
                    exited.wait(kill_grace_s)
            finally:
                exited.close()
        finally:
            _signal_group(process.pid, signal.SIGKILL)  # stragglers, or all of it if interrupted
            returncode = process.wait()
            for tee in tees:
                tee.join(timeout=5)
    return RunOutcome(
        returncode,
        timed_out=stopped_by == "timeout",
        duration_s=time.monotonic() - started,
        cancelled=stopped_by == "cancelled",
    )
