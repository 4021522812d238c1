"""Who holds a lock, a pin, a reservation or a temp file: one process, named.

An owner is written ``<host>+<pid>+<start>+<nonce>``. On its own host it is
alive while a process with that pid *and* that start time exists (so a
recycled pid does not keep a dead owner alive); on another host we cannot
tell, and callers judge by the age of the file instead.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

_SEPARATOR = "+"


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # Field 22, counted after the command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str
    nonce: str

    @classmethod
    def current(cls) -> Owner:
        """This process (computed afresh, so a forked child is its own owner)."""
        pid = os.getpid()
        host, start = _own_identity(pid)
        return cls(host, pid, start, secrets.token_hex(4))

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.strip().rsplit(_SEPARATOR, 3)
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])

    def __str__(self) -> str:
        return _SEPARATOR.join((self.host, str(self.pid), self.start, self.nonce))

    def is_alive(self) -> bool | None:
        """True or False on this host; None when the owner lives on another host."""
        if self.host != _host():
            return None
        return process_start(self.pid) == self.start


def _host() -> str:
    return socket.gethostname().replace(_SEPARATOR, "-").replace("/", "-") or "localhost"


_own: tuple[int, str, str] | None = None  # (pid, host, start) of this process, read once


def _own_identity(pid: int) -> tuple[str, str]:
    global _own
    if _own is None or _own[0] != pid:  # first call, or a forked child
        _own = (pid, _host(), process_start(pid) or "0")
    return _own[1], _own[2]
