from pathlib import Path

import pytest

from stager.errors import ConfigError, UnsafePathError
from stager.locations import S3Url
from stager.plan import PushAction, Source, plan_pull, plan_push, single_pull_dest

DEST = S3Url("bkt", "run1/")


def src(logical: str, size: int) -> Source:
    return Source(logical=logical, size=size, local_path=Path("/frontend") / logical)


def test_new_and_resized_files_upload_and_same_size_files_compare() -> None:
    listing = {"run1/same.txt": 10, "run1/resized.txt": 99}
    items = plan_push(
        [src("same.txt", 10), src("resized.txt", 10), src("new.txt", 5)], DEST, listing
    )
    actions = {item.url.key: item.action for item in items}
    assert actions == {
        "run1/same.txt": PushAction.COMPARE,
        "run1/resized.txt": PushAction.UPLOAD,
        "run1/new.txt": PushAction.UPLOAD,
    }


def test_two_sources_on_one_key_are_refused() -> None:
    with pytest.raises(ConfigError, match="two sources map to s3://bkt/run1/a/x"):
        plan_push([src("a/x", 1), src("a/./x", 2)], DEST, {})


def test_pull_maps_keys_below_the_prefix_and_skips_directory_markers(tmp_path: Path) -> None:
    objects = [
        (S3Url("bkt", "run1/b/2.txt"), 2),
        (S3Url("bkt", "run1/a.txt"), 1),
        (S3Url("bkt", "run1/dir/"), 0),
    ]
    items = plan_pull(objects, DEST, tmp_path)
    assert [(item.dest, item.size) for item in items] == [
        (tmp_path / "a.txt", 1),
        (tmp_path / "b" / "2.txt", 2),
    ]


@pytest.mark.parametrize("key", ["run1/../../etc/cron.d/x", "run1/a/../../x", "run1//x"])
def test_pull_refuses_keys_that_escape_the_destination(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafePathError):
        plan_pull([(S3Url("bkt", key), 1)], DEST, tmp_path)


def test_single_pull_destination(tmp_path: Path) -> None:
    url = S3Url("bkt", "run1/ref.fa")
    assert single_pull_dest(url, tmp_path / "x.fa", dest_is_dir=False) == tmp_path / "x.fa"
    assert single_pull_dest(url, tmp_path, dest_is_dir=True) == tmp_path / "ref.fa"
