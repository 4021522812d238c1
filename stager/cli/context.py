"""What every command shares: settings loaded once, and the resources built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stager.digestcache import DigestCache
from stager.objectstore import ObjectStore
from stager.settings import Settings, load_settings


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
        store = ObjectStore(self.settings)
        self._closers.append(store)
        return store

    def digest_cache(self) -> DigestCache:
        cache = DigestCache(self.settings.state_dir / "digests.sqlite")
        self._closers.append(cache)
        return cache

    def close(self) -> None:
        while self._closers:
            self._closers.pop().close()
