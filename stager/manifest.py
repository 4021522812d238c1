"""Manifests: the record of what a transfer put where.

A manifest lists every file with its logical path, location, size and
digest. Push writes one (create-only) so later steps can stage inputs by
digest without listing or hashing again. The JSON form is documented in
docs/usage.md; ``format`` gates readers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from stager.digest import Digest
from stager.errors import StagerError

FORMAT = "stager-manifest/1"


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    url: str
    size: int
    digest: Digest


@dataclass(frozen=True)
class Manifest:
    kind: str
    created_at: str
    entries: tuple[ManifestEntry, ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "kind": self.kind, "created_at": self.created_at}
        body["entries"] = [  # type: ignore[assignment]
            {**asdict(entry), "digest": str(entry.digest)} for entry in self.entries
        ]
        return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            body: dict[str, Any] = json.loads(data)
            if body.get("format") != FORMAT:
                raise StagerError(f"unsupported manifest format {body.get('format')!r}")
            entries = tuple(
                ManifestEntry(
                    path=str(item["path"]),
                    url=str(item["url"]),
                    size=int(item["size"]),
                    digest=Digest.parse(str(item["digest"])),
                )
                for item in body["entries"]
            )
            return cls(kind=str(body["kind"]), created_at=str(body["created_at"]), entries=entries)
        except (ValueError, KeyError, TypeError) as exc:
            raise StagerError(f"malformed manifest: {exc}") from exc
