"""Where S3 is and in which region, from settings, the environment and the AWS files,
resolved without botocore; and ListObjectsV2 pages read by the native client."""

from __future__ import annotations

from pathlib import Path

import pytest

from stager.awsconfig import load_aws_config, proxied
from stager.crt import CrtTransfers, parse_listing, static_provider
from stager.errors import StagerError
from stager.locations import S3Url
from stager.settings import Settings

CONFIG = """\
[default]
region = eu-west-3

[profile lab]
region = ap-south-1
services = lab-services
ca_bundle = /etc/lab-ca.pem

[services lab-services]
s3 =
  endpoint_url = http://10.0.0.5:8333

[profile fips]
use_fips_endpoint = true
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config").write_text(CONFIG)
    (tmp_path / "credentials").write_text("[keys-only]\naws_access_key_id = x\n")
    return {
        "AWS_EC2_METADATA_DISABLED": "true",  # not on EC2, whatever machine runs this
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
    }


def test_the_default_profile_names_the_region_and_aws_its_endpoint(files: dict[str, str]) -> None:
    aws = load_aws_config(Settings(), files)
    assert (aws.region, aws.endpoint, aws.endpoint_id) == (
        "eu-west-3",
        "https://s3.eu-west-3.amazonaws.com",
        "aws:eu-west-3",
    )
    china = load_aws_config(Settings(region="cn-north-1"), files)
    assert china.endpoint == "https://s3.cn-north-1.amazonaws.com.cn"


def test_a_named_profile_its_services_section_and_the_order_of_sources(
    files: dict[str, str],
) -> None:
    lab = load_aws_config(Settings(), {**files, "AWS_PROFILE": "lab"})
    assert (lab.region, lab.endpoint_url, lab.ca_bundle) == (
        "ap-south-1",
        "http://10.0.0.5:8333",
        "/etc/lab-ca.pem",
    )
    env = {**files, "AWS_PROFILE": "lab", "AWS_REGION": "us-west-2"}
    env["AWS_ENDPOINT_URL_S3"] = "http://s3.local:9000"
    assert (load_aws_config(Settings(), env).region, load_aws_config(Settings(), env).endpoint) == (
        "us-west-2",
        "http://s3.local:9000",
    )
    flags = Settings(region="sa-east-1", endpoint_url="http://flag:1", profile="lab")
    assert load_aws_config(flags, env).endpoint == "http://flag:1"
    ignored = {**files, "AWS_PROFILE": "lab", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert load_aws_config(Settings(), ignored).endpoint_url is None


def test_what_only_botocore_resolves_is_left_to_it(files: dict[str, str]) -> None:
    assert load_aws_config(Settings(profile="fips"), files).needs_botocore
    assert load_aws_config(Settings(profile="nowhere"), files).needs_botocore
    assert not load_aws_config(Settings(profile="keys-only"), files).needs_botocore
    assert not load_aws_config(Settings(), files).needs_botocore


def page(body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"{body}</ListBucketResult>"
    ).encode()


def test_a_listing_page_decodes_keys_and_names_the_next_page() -> None:
    items, token = parse_listing(
        page(
            "<IsTruncated>true</IsTruncated><NextContinuationToken>t/2=</NextContinuationToken>"
            "<Contents><Key>a+b+%C3%BC.txt</Key><Size>3</Size><ETag>&quot;e1&quot;</ETag></Contents>"
            "<Contents><Key>1%2B1.txt</Key><Size>0</Size></Contents>"
        ),
        "s3://b/p/",
    )
    assert items == [("a b \u00fc.txt", 3, '"e1"'), ("1+1.txt", 0, None)] and token == "t/2="
    assert parse_listing(page("<IsTruncated>false</IsTruncated>"), "s3://b/") == ([], None)
    with pytest.raises(StagerError, match="names no next one"):
        parse_listing(page("<IsTruncated>true</IsTruncated>"), "s3://b/")
    with pytest.raises(StagerError, match="not S3's"):
        parse_listing(b"<html>a proxy's error page", "s3://b/")


@pytest.mark.parametrize(
    ("endpoint", "bucket", "host", "path"),
    [
        # AWS's own endpoints: the bucket goes in the host name (virtual-host addressing).
        (
            "https://s3.eu-west-3.amazonaws.com",
            "runs",
            "runs.s3.eu-west-3.amazonaws.com",
            "/a%20b/%C3%BC",
        ),
        (
            "https://s3.dualstack.us-east-2.amazonaws.com",
            "runs",
            "runs.s3.dualstack.us-east-2.amazonaws.com",
            "/a%20b/%C3%BC",
        ),
        (
            "https://s3-fips.us-gov-west-1.amazonaws.com",
            "runs",
            "runs.s3-fips.us-gov-west-1.amazonaws.com",
            "/a%20b/%C3%BC",
        ),
        (
            "https://s3.cn-north-1.amazonaws.com.cn",
            "runs",
            "runs.s3.cn-north-1.amazonaws.com.cn",
            "/a%20b/%C3%BC",
        ),
        # A dotted bucket name would not match the endpoint's certificate: path-style.
        (
            "https://s3.eu-west-3.amazonaws.com",
            "my.runs",
            "s3.eu-west-3.amazonaws.com",
            "/my.runs/a%20b/%C3%BC",
        ),
        # Any other endpoint (a local server, MinIO, a proxy): path-style, its port kept.
        ("http://127.0.0.1:8333", "runs", "127.0.0.1:8333", "/runs/a%20b/%C3%BC"),
        ("https://storage.example.org", "runs", "storage.example.org", "/runs/a%20b/%C3%BC"),
    ],
)
def test_requests_address_the_bucket_as_the_endpoint_expects(
    endpoint: str, bucket: str, host: str, path: str
) -> None:
    native = CrtTransfers(
        Settings(), static_provider("AKIDEXAMPLE", "secret"), endpoint_url=endpoint, region="x"
    )
    request = native._request("GET", S3Url(bucket, "a b/\u00fc"), {"Content-Length": "0"})
    assert request.headers.get("Host") == host
    assert request.path == path


@pytest.mark.parametrize(
    ("endpoint", "environ", "through_proxy"),
    [
        ("https://s3.us-east-1.amazonaws.com", {}, False),
        ("https://s3.us-east-1.amazonaws.com", {"HTTPS_PROXY": "http://p:3128"}, True),
        ("https://s3.us-east-1.amazonaws.com", {"https_proxy": "http://p:3128"}, True),
        ("https://s3.us-east-1.amazonaws.com", {"HTTP_PROXY": "http://p:3128"}, False),
        ("http://127.0.0.1:8333", {"HTTPS_PROXY": "http://p:3128"}, False),
        ("http://127.0.0.1:8333", {"HTTP_PROXY": "http://p:3128"}, True),
        ("http://127.0.0.1:8333", {"HTTP_PROXY": "http://p", "NO_PROXY": "127.0.0.1"}, False),
        ("http://127.0.0.1:8333", {"HTTP_PROXY": "http://p", "no_proxy": "127.0.0.1:8333"}, False),
        ("http://127.0.0.1:8333", {"HTTP_PROXY": "http://p", "NO_PROXY": "127.0.0.1:9"}, True),
        ("http://127.0.0.1:8333", {"HTTP_PROXY": "http://p", "NO_PROXY": " * "}, False),
        (
            "https://s3.eu-west-1.amazonaws.com",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com, .amazonaws.com"},
            False,
        ),
        (
            "https://s3.eu-west-1.amazonaws.com",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "ws.com,amazonaws.co"},
            True,
        ),
    ],
)
def test_a_proxy_applies_by_the_endpoints_scheme_unless_no_proxy_names_its_host(
    endpoint: str, environ: dict[str, str], through_proxy: bool
) -> None:
    assert proxied(endpoint, environ) is through_proxy
