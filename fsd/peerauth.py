"""Signing and checking requests to the node file service with the cluster token.

Every request carries one header::

    Stager-Signature: v1 <unix seconds> <nonce> <64 hex>

where the hex is HMAC-SHA256, under a key derived from the cluster token,
of the method, the path, the digest the request is about (``-`` for none),
the timestamp and the nonce, one per line. The token itself never travels,
so a node that serves files (or a packet capture) never learns it.

A :class:`RequestGuard` refuses, all with the same :class:`Refused` and no
detail a caller could learn from: a missing or malformed header, a
timestamp outside the replay window, a MAC that differs (compared in
constant time), and a nonce already accepted within the window (a replay).
The guard never looks at whether the digest exists; the server answers a
refusal before it opens anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

HEADER = "Stager-Signature"
SCHEME = "v1"
WINDOW_S = 30.0
MAX_NONCES = 200_000  # accepted nonces remembered at once (a window's worth of requests)
_KEY_LABEL = b"stager node file service v1"


class Refused(Exception):
    """The request is not signed by a holder of the cluster token (or is a replay)."""


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, method: str, path: str, digest: str, stamp: str, nonce: str) -> str:
    message = "\n".join((method.upper(), path, digest, stamp, nonce)).encode(
        "utf-8", "surrogateescape"
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class Signer:
    """Makes the header for one request (a client holds one per cluster token)."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        self._key = _key(token)
        self._clock = clock

    def __repr__(self) -> str:
        return "Signer(<cluster token>)"

    def header(self, method: str, path: str, digest: str = "-") -> str:
        stamp = str(int(self._clock()))
        nonce = secrets.token_hex(12)
        return f"{SCHEME} {stamp} {nonce} {_mac(self._key, method, path, digest, stamp, nonce)}"


class RequestGuard:
    """Checks request headers; thread-safe. See the module docstring for what it refuses."""

    def __init__(
        self,
        token: str,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = _key(token)
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "RequestGuard(<cluster token>)"

    def check(self, method: str, path: str, digest: str, header: str | None) -> None:
        """Return if the request is authentic and new; raise :class:`Refused` otherwise."""
        parts = (header or "").split(" ")
        if len(parts) != 4 or parts[0] != SCHEME:
            raise Refused
        _, stamp, nonce, mac = parts
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise Refused
        if not (8 <= len(nonce) <= 64 and nonce.isascii() and nonce.isalnum()):
            raise Refused
        expected = _mac(self._key, method, path, digest, stamp, nonce)
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "surrogateescape")):
            raise Refused
        now = self._clock()
        if abs(now - int(stamp)) > self._window_s:
            raise Refused
        with self._lock:
            self._forget(now)
            if nonce in self._seen or len(self._seen) >= MAX_NONCES:
                raise Refused
            self._seen[nonce] = int(stamp) + self._window_s

    def _forget(self, now: float) -> None:
        """Drop nonces whose timestamps have left the window (they fail that check now)."""
        if now < self._next_sweep and len(self._seen) < MAX_NONCES:
            return
        self._next_sweep = now + 1.0
        for nonce in [n for n, until in self._seen.items() if until < now]:
            del self._seen[nonce]
