"""What node file services and their clients agree on: headers, the status answer and
what a PUT's signature covers. Shared by :mod:`fsd.peerserver` (aiohttp) and
:mod:`fsd.peerclient` (the standard library), so a node that only fetches from peers
never loads the server's HTTP stack."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

WRITE_BEHIND_HEADER = "Stager-Write-Behind"
TASK_HEADER = "Stager-Task"
GENERATION_HEADER = "Stager-Generation"


@dataclass(frozen=True)
class ServiceStatus:
    """What ``GET /v1/status`` answers."""

    entries: int
    used_bytes: int
    quota_bytes: int
    outbox_pending: int
    outbox_written: int
    outbox_lost: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def put_subject(digest: str, write_behind: str, task: str, generation: str = "") -> str:
    """What a PUT's signature covers besides method and path (so no header can be swapped)."""
    return f"{digest} {write_behind or '-'} {task or '-'} {generation or '-'}"
