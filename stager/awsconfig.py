"""Where S3 is, in which region, trusting which CAs: the standard AWS configuration,
read without botocore (which takes ~0.3 s to load).

The sources, and their order, are botocore's:

- **profile**: the ``profile`` setting, else ``AWS_PROFILE`` (or
  ``AWS_DEFAULT_PROFILE``), else ``default``; read from ``AWS_CONFIG_FILE``
  (``~/.aws/config``: ``[profile NAME]``, ``[default]``) and
  ``AWS_SHARED_CREDENTIALS_FILE`` (``~/.aws/credentials``: ``[NAME]``);
- **region**: the setting, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the
  profile's ``region``; for AWS's own endpoint, then the instance metadata
  service (IMDSv2, 1 s at most; ``AWS_EC2_METADATA_DISABLED`` turns it off);
- **endpoint**: the setting; then, unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``
  (or the profile's ``ignore_configured_endpoint_urls``) is true,
  ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the ``endpoint_url`` of the
  profile's ``services`` section for s3, the profile's ``endpoint_url``;
  else AWS's own regional endpoint;
- **CA bundle**: the setting, ``AWS_CA_BUNDLE``, the profile's ``ca_bundle``;
- **proxy**: ``HTTPS_PROXY`` or ``HTTP_PROXY`` (by the endpoint's scheme,
  either case), unless ``NO_PROXY`` names the endpoint's host
  (:func:`proxied`).

Credentials are the native client's own chain (:func:`stager.crt.chain_provider`).
What this module does not resolve (FIPS or dual-stack endpoints, a named
profile that no file holds) it leaves to botocore: ``needs_botocore``.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stager.settings import Settings

DEFAULT_REGION = "us-east-1"  # botocore's for S3 when nothing names one
IMDS_TIMEOUT_S = 1.0
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


def proxied(endpoint: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether requests to ``endpoint`` go through an HTTP proxy, as botocore decides:
    the scheme's ``*_PROXY`` variable is set and ``NO_PROXY`` does not name the host."""
    parts = urllib.parse.urlsplit(endpoint)
    name = f"{parts.scheme}_proxy"
    if not (environ.get(name) or environ.get(name.upper())):
        return False
    host = (parts.hostname or "").lower()
    for entry in (environ.get("no_proxy") or environ.get("NO_PROXY") or "").split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return False
        entry = entry.lstrip(".")
        if entry and (entry in (host, parts.netloc.lower()) or host.endswith("." + entry)):
            return False
    return True


def load_aws_config(
    settings: Settings,
    environ: Mapping[str, str] = os.environ,
    *,
    metadata_region: Callable[[Mapping[str, str]], str | None] | None = None,
) -> AwsConfig:
    """Resolve ``settings`` against the environment and the AWS files; the metadata
    service (``metadata_region``, default :func:`instance_region`) is asked only for
    AWS's own endpoint when nothing else names a region."""
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
    region = (
        settings.region
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or profile.get("region")
    )
    if region is None and endpoint is None:
        region = (metadata_region or instance_region)(environ)
    return AwsConfig(
        profile=named,
        region=region,
        endpoint_url=endpoint,
        ca_bundle=str(settings.ca_bundle or "")
        or environ.get("AWS_CA_BUNDLE")
        or profile.get("ca_bundle"),
        needs_botocore=not profile_exists or (special and endpoint is None),
    )


def instance_region(environ: Mapping[str, str]) -> str | None:
    """The region of the EC2 instance this runs on, from its metadata service (IMDSv2: a
    token, then the region), or None off EC2 (it answers within 1 s or not at all)."""
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() in _TRUE:
        return None
    base = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "http://169.254.169.254"
    try:
        token_request = urllib.request.Request(
            f"{base.rstrip('/')}/latest/api/token",
            method="PUT",
            headers={"x-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_request, timeout=IMDS_TIMEOUT_S) as answer:
            token = answer.read().decode()
        region_request = urllib.request.Request(
            f"{base.rstrip('/')}/latest/meta-data/placement/region",
            headers={"x-aws-ec2-metadata-token": token},
        )
        with urllib.request.urlopen(region_request, timeout=IMDS_TIMEOUT_S) as answer:
            region = answer.read().decode().strip()
    except (OSError, ValueError):  # off EC2: no route, refused, or timed out
        return None
    return region if re.fullmatch(r"[a-z0-9-]{1,32}", region) else None


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
