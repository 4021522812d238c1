import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from stager.errors import ConfigError
from stager.settings import (
    VARIABLES,
    Settings,
    load_settings,
    setting_docs,
    unknown_variables,
    variables_of,
)
from stager.units import format_size, parse_size

MiB = 1024 * 1024


def test_defaults_are_sane(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings == Settings(state_dir=settings.state_dir)
    assert settings.part_size_bytes == 8 * MiB
    assert settings.max_attempts == 5


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    (tmp_path / "stager.toml").write_text(
        'part_size_bytes = "16M"\nmax_concurrency = 3\nfiles_in_flight = 7\n'
    )
    settings = load_settings(
        {"max_concurrency": 20, "region": None},
        environ={"STAGER_PART_SIZE_BYTES": "32M", "STAGER_MAX_CONCURRENCY": "9"},
        cwd=tmp_path,
    )
    assert settings.max_concurrency == 20  # flag beats env and file
    assert settings.part_size_bytes == 32 * MiB  # env beats file
    assert settings.files_in_flight == 7  # file beats default
    assert settings.region is None  # an absent flag overrides nothing


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={}, config_path=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("colour = 'blue'\n", "unknown setting 'colour'"),
        ("max_concurrency = 0\n", "max_concurrency"),
        ("part_size_bytes = 'huge'\n", "part_size_bytes"),
        ("part_size_bytes = '1M'\n", "below the S3 minimum"),
        ("endpoint_url = 'ftp://x'\n", "not an http"),
        ("this is not toml", "cannot read config file"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, config_path=path)


def test_bad_environment_value_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="from the environment"):
        load_settings(environ={"STAGER_MAX_ATTEMPTS": "many"}, cwd=tmp_path)


def test_every_setting_is_documented() -> None:
    docs = setting_docs()
    assert {name for name, _, _ in docs} == set(Settings.__dataclass_fields__)
    assert all(description for _, _, description in docs)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("64K", 65536),
        ("8M", 8 * MiB),
        ("8MiB", 8 * MiB),
        ("1.5G", 3 * 512 * MiB),
        ("140g", 140 * 1024 * MiB),
        (7, 7),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "1X", "one"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3) == "3 B"


def test_a_misspelt_variable_is_reported_with_the_closest_name() -> None:
    environ = {"STAGER_CACHE_QOUTA": "1G", "STAGER_PART_SIZE_BYTES": "8M", "HOME": "/root"}
    known = VARIABLES | {"STAGER_CACHE_QUOTA"}
    assert unknown_variables(environ, known) == [("STAGER_CACHE_QOUTA", "STAGER_CACHE_QUOTA")]
    assert unknown_variables({"STAGER_NOTHING_LIKE_IT": "1"}, known) == [
        ("STAGER_NOTHING_LIKE_IT", None)
    ]


def test_every_command_warns_of_an_unknown_variable_in_one_line(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(repo),
        "STAGER_CACHE_DIR": str(tmp_path / "cache"),  # read by another package: known
        "STAGER_DISPATCHER_URL": "http://127.0.0.1:1",
        "STAGER_TASK_ID": "t",
    }
    quiet = subprocess.run(
        [sys.executable, "-m", "stager", "cache", "stats"], capture_output=True, text=True, env=env
    )
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    env["STAGER_CACHE_QOUTA"] = "1G"
    warned = subprocess.run(
        [sys.executable, "-m", "stager", "cache", "stats"], capture_output=True, text=True, env=env
    )
    assert warned.returncode == 0
    assert warned.stderr.strip() == (
        "stager: warning: STAGER_CACHE_QOUTA is not a stager variable and is ignored; "
        "did you mean STAGER_CACHE_QUOTA?"
    )


def test_the_declared_variables_are_exactly_what_each_package_reads() -> None:
    declared = entry_points(group="stager.variables")
    settings_classes = set()
    for entry in declared:
        target = entry.load()
        if isinstance(target, str):  # a module's name for an environment variable
            assert target == entry.name, entry
        else:  # a settings class: the variable sets one of its fields
            assert entry.name in variables_of(target), entry
            settings_classes.add(target)
    listed = {entry.name for entry in declared}
    for cls in settings_classes:  # no field of a listed class is left out
        assert variables_of(cls) <= listed, cls.__name__
    assert not listed & VARIABLES  # the core's own are not listed twice
