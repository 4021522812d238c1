from pathlib import Path

import pytest

from stager.errors import ConfigError
from stager.settings import Settings, load_settings, setting_docs
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
