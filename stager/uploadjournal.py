"""The multipart uploads a process has open, written down so a later one can abort them.

A process killed in the middle of a multipart upload leaves the upload open
in S3: its parts are stored (and billed) until someone aborts it. S3 cannot
say which process began an upload, so the process says it itself: before an
upload big enough to go in parts it writes one small record (the key, the
time, and its :class:`~stager.owner.Owner`: host, pid and start time) into
the journal's directory, and removes it when the upload ends, however it
ends. A record still there whose process
is gone belongs to a killed process; :meth:`UploadJournal.left_behind` finds
them, and :meth:`~stager.objectstore.ObjectStore.abort_left_behind` aborts
the uploads open for that key that began within :data:`SKEW_S` of it.

An upload of the same key begun by another live process in that window
(another attempt of the same task, on another node) is aborted too; its
client then fails that upload and its task retries it (bounded).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stager.atomic import atomic_file
from stager.locations import S3Url
from stager.owner import Owner

SKEW_S = 300.0  # between this host's clock and the S3 server's, and a client's retries


@dataclass(frozen=True)
class OpenUpload:
    """One journal record: a multipart upload a process began and has not ended."""

    url: S3Url
    started_at: float  # Unix time, by this host's clock
    owner: Owner

    def to_json(self) -> str:
        return json.dumps(
            {"url": str(self.url), "started_at": self.started_at, "owner": str(self.owner)}
        )

    @classmethod
    def from_json(cls, text: str) -> OpenUpload:
        """Raises ``ValueError`` (or ``KeyError``, ``TypeError``) for a record not ours."""
        raw = json.loads(text)
        owner = Owner.parse(str(raw["owner"]))
        if owner is None:
            raise ValueError("no owner")
        return cls(S3Url.parse(str(raw["url"])), float(raw["started_at"]), owner)

    def began(self, initiated_at: float) -> bool:
        """Whether an upload of this key begun at ``initiated_at`` (server time) is ours."""
        return abs(initiated_at - self.started_at) <= SKEW_S


class UploadJournal:
    """Records of the uploads of at least ``threshold`` bytes (those that go in parts)."""

    def __init__(self, directory: Path, *, threshold: int) -> None:
        self.directory = directory
        self.threshold = threshold

    @contextlib.contextmanager
    def recording(self, url: S3Url, size: int) -> Iterator[None]:
        """Keep a record of the upload of ``size`` bytes to ``url`` while it runs."""
        if size < self.threshold:
            yield
            return
        record = OpenUpload(url, time.time(), Owner.current())
        path = self.directory / f"{record.owner}.json"
        with atomic_file(path, mode=0o600) as handle:  # a state file: synced
            handle.write(record.to_json().encode())
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def left_behind(self) -> Iterator[tuple[Path, OpenUpload]]:
        """Records whose process is gone (killed), on this host.

        A file that is not a record (damaged, or a stranger's) is removed
        unread, so that it is not looked at forever.
        """
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:
            return
        for path in paths:
            try:
                record = OpenUpload.from_json(path.read_text())
            except FileNotFoundError:  # ended meanwhile
                continue
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if record.owner.is_alive() is False:  # None: another host's, not ours to judge
                yield path, record
