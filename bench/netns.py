"""A separate host on this machine: a network namespace joined by a veth pair.

:class:`Host` gives the namespace an address; :meth:`Host.run` starts a
process inside it; :meth:`Host.vanish` makes the host behave as a dead
node does: its link goes down while the other side keeps its hardware
address, so packets sent to it vanish without an answer (no RST, no ICMP),
and only a timeout notices. Needs root and ``ip``; without them, the
constructor raises :class:`NoNamespaces` (tests skip, benchmarks say so).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence

_numbers = itertools.count()


def _ip(*args: str, namespace: str | None = None) -> None:
    command = (
        ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    )
    subprocess.run(command, check=True, capture_output=True, timeout=10)


class NoNamespaces(Exception):
    """This machine (or this user) cannot make network namespaces."""


class Host:
    def __init__(self) -> None:
        number = (os.getpid() % 200) * 50 + next(_numbers) % 50
        self.name = f"stager-t{os.getpid()}-{number}"
        self.outside, self.inside = f"vh{number}x", f"vn{number}x"
        subnet = f"10.{200 + number // 250 % 50}.{number % 250}"
        self.gateway, self.address = f"{subnet}.1", f"{subnet}.2"
        try:
            _ip("netns", "add", self.name)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise NoNamespaces(f"network namespaces are not available here: {exc}") from exc
        try:
            _ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
            _ip("link", "set", self.inside, "netns", self.name)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.outside)
            _ip("link", "set", self.outside, "up")
            _ip("addr", "add", f"{self.address}/30", "dev", self.inside, namespace=self.name)
            _ip("link", "set", self.inside, "up", namespace=self.name)
            _ip("link", "set", "lo", "up", namespace=self.name)
        except BaseException:
            self.remove()
            raise

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` as a command that runs inside the namespace (on the other host)."""
        return ["ip", "netns", "exec", self.name, *args]

    def vanish(self) -> None:
        """From now on, packets to this host are dropped without a word."""
        mac = subprocess.run(
            ["ip", "netns", "exec", self.name, "cat", f"/sys/class/net/{self.inside}/address"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        _ip(
            "neigh", "replace", self.address, "lladdr", mac, "dev", self.outside, "nud", "permanent"
        )
        _ip("link", "set", self.inside, "down", namespace=self.name)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
