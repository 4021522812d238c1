"""What every command shares: settings loaded once, and the resources built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stager.settings import Settings, load_settings

if TYPE_CHECKING:  # imported when first used: a command that never reaches S3 never loads boto3
    from stager.digestcache import DigestCache
    from stager.objectstore import ObjectStore


@dataclass
class CliState:
    flags: dict[str, Any]
    config_path: Path | None
    _settings: Settings | None = None
    _closers: list[Any] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.flags, config_path=self.config_path)
        return self._settings

    def object_store(self) -> ObjectStore:
        from stager.objectstore import ObjectStore
        from stager.uploadjournal import UploadJournal

        journal = UploadJournal(
            self.settings.state_dir / "uploads", threshold=self.settings.multipart_threshold_bytes
        )
        store = ObjectStore(self.settings, journal=journal)
        self._closers.append(store)
        return store

    def digest_cache(self) -> DigestCache:
        from stager.digestcache import DigestCache

        cache = DigestCache(self.settings.state_dir / "digests.sqlite")
        self._closers.append(cache)
        return cache

    def close(self) -> None:
        while self._closers:
            self._closers.pop().close()
