"""Where S3 is, in which region, trusting which CAs: the standard AWS configuration,
read without botocore (which takes ~0.3 s to load).

The sources, and their order, are botocore's:

- **profile**: the ``profile`` setting, else ``AWS_PROFILE`` (or
  ``AWS_DEFAULT_PROFILE``), else ``default``; read from ``AWS_CONFIG_FILE``
  (``~/.aws/config``: ``[profile NAME]``, ``[default]``) and
  ``AWS_SHARED_CREDENTIALS_FILE`` (``~/.aws/credentials``: ``[NAME]``);
- **region**: the setting, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the
  profile's ``region``;
- **endpoint**: the setting; then, unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``
  (or the profile's ``ignore_configured_endpoint_urls``) is true,
  ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the ``endpoint_url`` of the
  profile's ``services`` section for s3, the profile's ``endpoint_url``;
  else AWS's own regional endpoint;
- **CA bundle**: the setting, ``AWS_CA_BUNDLE``, the profile's ``ca_bundle``.

Credentials are the native client's own chain (:func:`stager.crt.chain_provider`).
What this module does not resolve (FIPS or dual-stack endpoints, a named
profile that no file holds) it leaves to botocore: ``needs_botocore``.
"""

from __future__ import annotations

import configparser
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stager.settings import Settings

DEFAULT_REGION = "us-east-1"  # botocore's for S3 when nothing names one
_TRUE = ("true", "1", "yes")


@dataclass(frozen=True)
class Credentials:
    """Explicit S3 keys, for servers we start ourselves; the secret never prints."""

    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class AwsConfig:
    profile: str | None  # named by the setting or the environment
    region: str | None
    endpoint_url: str | None  # configured; None: AWS's own
    ca_bundle: str | None
    needs_botocore: bool  # something here only botocore resolves

    @property
    def endpoint(self) -> str:
        """The endpoint to send requests to: the configured one, or AWS's for the region."""
        if self.endpoint_url:
            return self.endpoint_url
        region = self.region or DEFAULT_REGION
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return f"https://s3.{region}.{suffix}"

    @property
    def endpoint_id(self) -> str:
        """Names the endpoint, to tell the same key at two stores apart."""
        return self.endpoint_url or f"aws:{self.region or ''}"


def load_aws_config(settings: Settings, environ: Mapping[str, str] = os.environ) -> AwsConfig:
    """Resolve ``settings`` against the environment and the AWS files (no request made)."""
    named = settings.profile or environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE")
    config = _read(Path(environ.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser())
    section = "default" if named in (None, "default") else f"profile {named}"
    profile = dict(config[section]) if config.has_section(section) else {}
    if named and named != "default" and not profile:
        shared = _read(
            Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()
        )
        profile_exists = shared.has_section(named)
    else:
        profile_exists = True
    ignore = (
        environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        or profile.get("ignore_configured_endpoint_urls", "")
    ).lower() in _TRUE
    endpoint = settings.endpoint_url or (
        None if ignore else _configured_endpoint(environ, config, profile)
    )
    special = any(
        (environ.get(name) or profile.get(name.lower().removeprefix("aws_"), "")).lower() in _TRUE
        for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")
    )
    return AwsConfig(
        profile=named,
        region=settings.region
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or profile.get("region"),
        endpoint_url=endpoint,
        ca_bundle=str(settings.ca_bundle or "")
        or environ.get("AWS_CA_BUNDLE")
        or profile.get("ca_bundle"),
        needs_botocore=not profile_exists or (special and endpoint is None),
    )


def _configured_endpoint(
    environ: Mapping[str, str], config: configparser.ConfigParser, profile: Mapping[str, str]
) -> str | None:
    if found := environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"):
        return found
    services = profile.get("services")
    if services and config.has_section(f"services {services}"):
        nested = config[f"services {services}"].get("s3", "")
        for line in nested.splitlines():  # "s3 =\n  endpoint_url = ..."
            name, _, value = line.partition("=")
            if name.strip() == "endpoint_url" and value.strip():
                return value.strip()
    return profile.get("endpoint_url") or None


def _read(path: Path) -> configparser.ConfigParser:
    """An AWS configuration file (missing or unreadable: empty)."""
    parser = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(OSError, configparser.Error):
        parser.read(path)
    return parser
