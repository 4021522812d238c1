"""The journal of open multipart uploads: what it records, and whose it finds left behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stager.locations import S3Url
from stager.owner import Owner
from stager.uploadjournal import SKEW_S, OpenUpload, UploadJournal

URL = S3Url("bkt", "out/a b \u00fc.bin")


def records(journal: UploadJournal) -> list[Path]:
    return sorted(journal.directory.glob("*.json"))


def test_an_upload_in_parts_is_recorded_while_it_runs_and_not_after(tmp_path: Path) -> None:
    journal = UploadJournal(tmp_path / "uploads", threshold=100)
    with journal.recording(URL, 99):  # one request: nothing to leave open
        assert not (tmp_path / "uploads").exists()
    with journal.recording(URL, 100):
        (path,) = records(journal)
        record = OpenUpload.from_json(path.read_text())
        assert record.url == URL and record.owner.is_alive() is True
        assert list(journal.left_behind()) == []  # its process runs: not left behind
    assert records(journal) == []
    with pytest.raises(OSError), journal.recording(URL, 100):
        raise OSError("the upload failed")
    assert records(journal) == []  # ended, however it ended


def test_records_of_dead_processes_are_found_others_spared_junk_removed(tmp_path: Path) -> None:
    journal = UploadJournal(tmp_path, threshold=1)
    me = Owner.current()
    dead = OpenUpload(URL, time.time(), Owner(me.host, me.pid, "not-my-start-time", "a"))
    elsewhere = OpenUpload(URL, time.time(), Owner("other-host", 1, "1", "b"))
    (tmp_path / "dead.json").write_text(dead.to_json())
    (tmp_path / "elsewhere.json").write_text(elsewhere.to_json())
    (tmp_path / "junk.json").write_text('{"url": "s3://bkt/k"')
    found = list(journal.left_behind())
    assert found == [(tmp_path / "dead.json", dead)]
    assert sorted(p.name for p in records(journal)) == ["dead.json", "elsewhere.json"]


def test_an_upload_is_the_records_only_if_it_began_near_the_same_time() -> None:
    record = OpenUpload(URL, 1000.0, Owner.current())
    assert record.began(1000.0 + SKEW_S) and record.began(1000.0 - SKEW_S)
    assert not record.began(1000.0 + SKEW_S + 1)
