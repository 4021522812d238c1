"""The cache's ledger: bytes used, space reserved by inserts in progress, fetch count.

Read and rewritten only under the cache lock (docs/cache-format.md, rule 8).
A missing or unreadable ledger reads as empty; recovery recomputes
``used_bytes`` from the entries themselves, so the ledger is never the only
record of anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stager.atomic import atomic_file


@dataclass
class Reservation:
    size_bytes: int
    at: float
    # The flights a batch fetches under this reservation (entry names: a digest's
    # hex, or ``src-...``); another process waits for them rather than fetch them too.
    names: tuple[str, ...] = ()


@dataclass
class Ledger:
    used_bytes: int = 0
    fetches: int = 0
    reservations: dict[str, Reservation] = field(default_factory=dict)

    @property
    def reserved_bytes(self) -> int:
        return sum(r.size_bytes for r in self.reservations.values())


def read_ledger(path: Path) -> Ledger:
    try:
        body = json.loads(path.read_bytes())
        return Ledger(
            used_bytes=int(body["used_bytes"]),
            fetches=int(body.get("fetches", 0)),
            reservations={
                owner: Reservation(
                    int(r["bytes"]), float(r["at"]), tuple(str(n) for n in r.get("names", ()))
                )
                for owner, r in body.get("reservations", {}).items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Ledger()


def write_ledger(path: Path, ledger: Ledger) -> None:
    body = {
        "used_bytes": ledger.used_bytes,
        "fetches": ledger.fetches,
        "reservations": {
            owner: {"bytes": r.size_bytes, "at": r.at, **({"names": r.names} if r.names else {})}
            for owner, r in ledger.reservations.items()
        },
    }
    # No fsync: after a crash, recovery recounts the ledger from the entries.
    with atomic_file(path, durable=False) as handle:
        handle.write(json.dumps(body, sort_keys=True).encode())
