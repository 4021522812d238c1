"""The one settings object of the core, and where its values come from.

Precedence, highest first: command-line flags, ``STAGER_<FIELD>`` environment
variables, a TOML file (``--config`` or ``./stager.toml``), the defaults
below. Credentials and the default endpoint are not settings of ours: they
come from the standard AWS chain (environment, ``~/.aws``, instance profile,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``); ``endpoint_url`` overrides it.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from stager.errors import ConfigError
from stager.units import parse_size

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
MiB = 1024 * 1024
ENV_PREFIX = "STAGER_"
DEFAULT_CONFIG_NAME = "stager.toml"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stager"


def optional_str(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def optional_path(value: Any) -> Path | None:
    text = optional_str(value)
    return Path(text) if text else None


def positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a whole number") from exc
    if number < 1:
        raise ValueError(f"{number} is not at least 1")
    return number


def positive_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if number <= 0:
        raise ValueError(f"{number} is not above 0")
    return number


def size_value(value: Any) -> int:
    return parse_size(value if isinstance(value, int) else str(value))


def bool_value(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def member_of(kind: type[E]) -> Callable[[Any], E]:
    """A parser that accepts one of the enum's values (case and blanks ignored)."""

    def parse(value: Any) -> E:
        if isinstance(value, kind):
            return value
        text = str(value).strip()
        try:
            return next(m for m in kind if str(m.value).lower() == text.lower())
        except StopIteration:
            names = ", ".join(str(member.value) for member in kind)
            raise ValueError(f"{value!r} is not one of {names}") from None

    return parse


class ServerSideEncryption(enum.Enum):
    S3 = "AES256"  # SSE-S3: keys the store manages
    KMS = "aws:kms"  # SSE-KMS: a KMS key (sse_kms_key_id, or the bucket's default)


class TransferClient(enum.Enum):
    """What moves object bytes."""

    CRT = "crt"  # the native client (awscrt)
    S3TRANSFER = "s3transfer"  # botocore and s3transfer


def setting_field(default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    """A settings field: its default (or a zero-argument factory), parser and doc line."""
    metadata = {"parse": parse, "doc": doc}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated, immutable settings for the core data path."""

    endpoint_url: str | None = setting_field(
        None, optional_str, "S3 endpoint (overrides the AWS chain)"
    )
    region: str | None = setting_field(None, optional_str, "S3 region (default: the AWS chain's)")
    profile: str | None = setting_field(None, optional_str, "AWS profile name from ~/.aws")
    ca_bundle: Path | None = setting_field(
        None, optional_path, "CA certificates (PEM) for an https endpoint (default: AWS chain)"
    )
    max_attempts: int = setting_field(
        5, positive_int, "attempts per S3 request (standard retry mode)"
    )
    connect_timeout_s: float = setting_field(5.0, positive_float, "TCP connect timeout, seconds")
    read_timeout_s: float = setting_field(60.0, positive_float, "socket read timeout, seconds")
    part_size_bytes: int = setting_field(8 * MiB, size_value, "multipart part size")
    multipart_threshold_bytes: int = setting_field(
        8 * MiB, size_value, "files at least this big go multipart"
    )
    max_concurrency: int = setting_field(10, positive_int, "parallel requests per transfer manager")
    files_in_flight: int = setting_field(16, positive_int, "files pushed or pulled at once")
    transfer_client: TransferClient = setting_field(
        TransferClient.CRT,
        member_of(TransferClient),
        "what moves object bytes: crt (native) or s3transfer",
    )
    storage_class: str | None = setting_field(
        None, optional_str, "storage class of objects written (STANDARD_IA, INTELLIGENT_TIERING...)"
    )
    sse: ServerSideEncryption | None = setting_field(
        None,
        lambda value: (
            None if optional_str(value) is None else member_of(ServerSideEncryption)(value)
        ),
        "server-side encryption of objects written: AES256 (SSE-S3) or aws:kms (SSE-KMS)",
    )
    sse_kms_key_id: str | None = setting_field(
        None, optional_str, "the KMS key (id, ARN or alias) for sse = aws:kms [the bucket's]"
    )
    requester_pays: bool = setting_field(
        False, bool_value, "accept the charges of a requester-pays bucket (every request)"
    )
    state_dir: Path = setting_field(_default_state_dir, Path, "local state (digest cache)")
    progress: bool = setting_field(True, bool_value, "show progress bars on a terminal")

    def __post_init__(self) -> None:
        if self.part_size_bytes < 5 * MiB:
            raise ConfigError(
                f"part_size_bytes {self.part_size_bytes} is below the S3 minimum of 5 MiB",
                hint="set part_size_bytes to 5M or more",
            )
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ConfigError(
                f"ca_bundle {self.ca_bundle} is not a readable file",
                hint="give the PEM file of the CA that signed the endpoint's certificate",
            )
        if self.sse_kms_key_id and self.sse is not ServerSideEncryption.KMS:
            raise ConfigError(
                "sse_kms_key_id is set, but sse is not aws:kms",
                hint="set sse to aws:kms (--sse aws:kms), or drop the key id",
            )
        if self.storage_class is not None and not re.fullmatch(r"[A-Z_]{1,40}", self.storage_class):
            raise ConfigError(
                f"storage_class {self.storage_class[:40]!r} is not a storage class name",
                hint="write it as S3 does, e.g. STANDARD_IA or INTELLIGENT_TIERING",
            )
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"endpoint_url {self.endpoint_url!r} is not an http(s) URL",
                hint="write it like http://127.0.0.1:8333",
            )


def setting_docs(cls: type[Any] = Settings) -> list[tuple[str, str, str]]:
    """(name, default, description) of every setting of ``cls``, for docs and --help."""
    defaults = cls()
    return [(f.name, repr(getattr(defaults, f.name)), f.metadata["doc"]) for f in fields(cls)]


def _parse_layer(cls: type[Any], values: Mapping[str, Any], source: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    parsed: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r} in {source}")
        try:
            parsed[name] = known[name].metadata["parse"](raw)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"setting {name!r} from {source}: {exc}") from exc
    return parsed


def _env_layer(cls: type[Any], environ: Mapping[str, str]) -> dict[str, Any]:
    names = {ENV_PREFIX + f.name.upper(): f.name for f in fields(cls)}
    values = {names[key]: value for key, value in environ.items() if key in names}
    return _parse_layer(cls, values, "the environment")


def _file_layer(
    cls: type[Any], config_path: Path | None, cwd: Path, section: str | None
) -> dict[str, Any]:
    path = config_path if config_path is not None else cwd / DEFAULT_CONFIG_NAME
    if config_path is None and not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if section is None:  # the core's keys are the top-level ones; tables belong to others
        values = {key: value for key, value in data.items() if not isinstance(value, dict)}
    else:
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {path} is not a table")
    where = str(path) if section is None else f"[{section}] in {path}"
    return _parse_layer(cls, values, where)


def load_component(
    cls: type[T],
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    cwd: Path | None = None,
    section: str | None = None,
) -> T:
    """Merge defaults < TOML file < environment < flags into one ``cls``.

    ``cls`` is a frozen dataclass whose fields come from :func:`setting_field`.
    Its TOML keys are the top-level ones (``section=None``) or those of the
    table ``[section]``; its environment variables are ``STAGER_<FIELD>``.
    ``flags`` whose value is ``None`` were not given and do not override.
    """
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    layers = [
        _file_layer(cls, config_path, cwd or Path.cwd(), section),
        _env_layer(cls, os.environ if environ is None else environ),
        _parse_layer(cls, given, "the command line"),
    ]
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return cls(**merged)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    cwd: Path | None = None,
) -> Settings:
    """The core's settings (see :func:`load_component`)."""
    return load_component(Settings, flags, environ=environ, config_path=config_path, cwd=cwd)


def variables_of(*classes: type[Any]) -> frozenset[str]:
    """The ``STAGER_*`` names that set the fields of settings ``classes``."""
    return frozenset(ENV_PREFIX + f.name.upper() for cls in classes for f in fields(cls))


# Variables the core reads besides its settings; every other package names its
# own in the "stager.variables" entry point group (see pyproject.toml).
VARIABLES = variables_of(Settings) | {
    "STAGER_DEBUG",
    "STAGER_WEED_BINARY",
    "STAGER_TASK_ID",  # set for a task's command, which may run stager itself
    "STAGER_SANDBOX",
}


def unknown_variables(
    environ: Mapping[str, str], known: frozenset[str]
) -> list[tuple[str, str | None]]:
    """Each ``STAGER_*`` variable in ``environ`` that nothing reads, and the closest known name."""
    return [
        (name, next(iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)), None))
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known
    ]
