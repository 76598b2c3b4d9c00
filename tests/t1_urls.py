"""Storage URLs: parsing, URL <-> mount path, credential matching, mount names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearmount import config
from clearmount.config import (
    AzureContainer,
    AzureSettings,
    Boto3Settings,
    GcsCredentials,
    GcsSettings,
    S3Credentials,
    S3Settings,
)
from clearmount.urls import (
    StorageURL,
    azure_account_containers,
    azure_roots,
    describe_matches,
    endpoint_listed,
    gcs_roots,
    http_host_allowed,
    http_roots,
    is_s3_host,
    match_azure,
    match_gcs,
    match_s3,
    parse_url,
    path_to_url,
    s3_host_buckets,
    s3_roots,
    url_to_path,
    without_localhost,
)


def s3_settings(*entries: S3Credentials, secure: bool = True) -> S3Settings:
    return S3Settings(
        defaults=S3Credentials("sdk.aws.s3", key="default-key", secure=secure),
        credentials=entries,
        boto3=Boto3Settings(),
    )


def entry(source: str, bucket: str = "", host: str = "", **kwargs: object) -> S3Credentials:
    return S3Credentials(source, bucket=bucket, host=host, key="k", secret="s", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ parsing

# reference section 4: URL -> (base URL, object name)
REFERENCE = [
    ("s3://bucket/key", "s3://bucket", "key"),
    ("s3://host:9000/bucket/key", "s3://host:9000/bucket", "key"),
    ("gs://bucket/path", "gs://bucket", "path"),
    (
        "azure://account.blob.core.windows.net/container/path",
        "azure://account.blob.core.windows.net/container",
        "path",
    ),
    ("file:///abs/path", "file://", "abs/path"),
]


@pytest.mark.parametrize(("url", "base", "key"), REFERENCE)
def test_reference_vectors(url: str, base: str, key: str) -> None:
    parsed = parse_url(url)
    assert parsed.base_url == base
    assert parsed.key == key
    assert str(parsed) == url


def test_fields() -> None:
    assert parse_url("s3://bucket/a/b.txt") == StorageURL("s3", "", "bucket", "a/b.txt")
    assert parse_url("s3://minio:9000/bucket/a") == StorageURL("s3", "minio:9000", "bucket", "a")
    assert parse_url("gs://b/x/y") == StorageURL("gs", "", "b", "x/y")
    assert parse_url("azure://acct.blob.core.windows.net/c/p/q") == StorageURL(
        "azure", "acct.blob.core.windows.net", "c", "p/q"
    )
    assert parse_url("file:///nfs/share/x") == StorageURL("file", "", "", "nfs/share/x")
    assert parse_url("S3://Bucket/Key") == StorageURL("s3", "", "Bucket", "Key")


def test_bucket_and_host_roots() -> None:
    assert parse_url("s3://bucket") == StorageURL("s3", "", "bucket", "")
    assert parse_url("s3://bucket/") == StorageURL("s3", "", "bucket", "")
    assert parse_url("s3://minio:9000") == StorageURL("s3", "minio:9000", "", "")
    assert str(parse_url("s3://minio:9000/")) == "s3://minio:9000"
    assert (
        parse_url("azure://a.blob.core.windows.net").base_url == "azure://a.blob.core.windows.net"
    )
    assert str(parse_url("file:///")) == "file:///"


def test_keys_are_raw() -> None:
    url = "s3://b/dir with space/%41+plus/ünï?q=1#frag"
    parsed = parse_url(url)
    assert parsed.key == "dir with space/%41+plus/ünï?q=1#frag"
    assert str(parsed) == url
    assert parse_url("s3://b/dir/").key == "dir/"
    assert parse_url("s3://b//x").key == "/x"


def test_s3_host_needs_a_port_unless_configured() -> None:
    assert parse_url("s3://minio.example.com/bucket/k").bucket == "minio.example.com"
    settings_ = s3_settings(entry("e", host="MinIO.example.com"))
    parsed = parse_url("s3://minio.example.com/bucket/k", settings_)
    assert (parsed.host, parsed.bucket, parsed.key) == ("minio.example.com", "bucket", "k")
    # a port always means a host, configured or not
    assert parse_url("s3://10.0.0.1:443/b/k", settings_).host == "10.0.0.1:443"
    assert parse_url("s3://[::1]:9000/b/k").host == "[::1]:9000"
    # a colon without digits is not a port
    assert parse_url("s3://odd:name/k").host == ""


@pytest.mark.parametrize(
    "url",
    [
        "http:///x",
        "bucket/key",
        "/abs/path",
        "s3://",
        "s3:///key",
        "gs:///x",
        "azure:///c/x",
        "file://relative/path",
        "s3://minio:9000//key",
        "azure://a.blob.core.windows.net//x",
        "",
    ],
)
def test_unsupported_or_malformed(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


# ------------------------------------------------------------------------------ paths

DESIGN_TABLE = [
    ("s3://bucket/key/x.pt", "s3/bucket/key/x.pt"),
    ("s3://minio-host:9000/bucket/key", "s3/minio-host:9000/bucket/key"),
    ("gs://bucket/path/x", "gs/bucket/path/x"),
    (
        "azure://account.blob.core.windows.net/container/path",
        "azure/account.blob.core.windows.net/container/path",
    ),
    ("file:///nfs/share/x", "file/nfs/share/x"),
    ("https://files.clear.ml/proj/x.pt", "https/files.clear.ml/proj/x.pt"),
    (
        "http://clearml-host:8081/proj/t.1/artifacts/m.pt",
        "http/clearml-host:8081/proj/t.1/artifacts/m.pt",
    ),
    ("s3://bucket", "s3/bucket"),
    ("file:///", "file"),
]


@pytest.mark.parametrize(("url", "path"), DESIGN_TABLE)
def test_url_to_path_and_back(url: str, path: str) -> None:
    assert url_to_path(url) == path
    assert path_to_url(path) == url


def test_path_to_url_host_component() -> None:
    assert path_to_url("s3/host:9000/bucket/k") == "s3://host:9000/bucket/k"
    assert parse_url(path_to_url("s3/host:9000/bucket/k")).host == "host:9000"
    assert path_to_url("/s3/b/k") == "s3://b/k"


@pytest.mark.parametrize("path", ["", "s3", "gs/", "https", "ftp/x/y", "other"])
def test_path_to_url_rejects(path: str) -> None:
    with pytest.raises(ValueError):
        path_to_url(path)


segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
)
keys = st.lists(
    st.one_of(segment, st.sampled_from(["a b", "ü", "+", "%2F", "%", "?x=1", "#f", "."])),
    min_size=1,
    max_size=5,
).map("/".join)
buckets = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["s3", "s3-host", "gs", "azure", "file"]),
    bucket=buckets,
    key=keys,
)
def test_round_trip(scheme: str, bucket: str, key: str) -> None:
    if scheme == "s3-host":
        url = f"s3://minio:9000/{bucket}/{key}"
    elif scheme == "azure":
        url = f"azure://acct.blob.core.windows.net/{bucket}/{key}"
    elif scheme == "file":
        url = f"file:///{bucket}/{key}"
    else:
        url = f"{scheme}://{bucket}/{key}"
    parsed = parse_url(url)
    assert str(parsed) == url
    path = url_to_path(url)
    assert path_to_url(path) == url
    assert url_to_path(path_to_url(path)) == path
    assert parse_url(path_to_url(path)) == parsed


# ------------------------------------------------------------------------------ S3 matching


def test_bucket_entry_matches_on_segment_boundary() -> None:
    s3 = s3_settings(entry("data", bucket="data"))
    assert match_s3(s3, parse_url("s3://data/x")).source == "data"
    assert match_s3(s3, parse_url("s3://data")).source == "data"
    # ClearML's string prefix would use "data" for these
    assert match_s3(s3, parse_url("s3://data-large/x")).source == "sdk.aws.s3"
    assert match_s3(s3, parse_url("s3://database/x")).source == "sdk.aws.s3"


def test_host_entry_matches_on_segment_boundary() -> None:
    s3 = s3_settings(entry("special", bucket="special", host="my-minio-host:9000"))
    assert match_s3(s3, parse_url("s3://my-minio-host:9000/special/x")).source == "special"
    fallback = match_s3(s3, parse_url("s3://my-minio-host:9000/specialized/x"))
    assert fallback.source == "sdk.aws.s3"
    assert (fallback.host, fallback.bucket) == ("my-minio-host:9000", "specialized")
    # a bucket-only "my-minio-host" is not a prefix of the host "my-minio-host:9000"
    s3 = s3_settings(entry("bucket", bucket="my-minio-host"))
    assert match_s3(s3, parse_url("s3://my-minio-host:9000/b/x")).source == "sdk.aws.s3"


def test_most_specific_first_and_host_before_bucket() -> None:
    s3 = s3_settings(
        entry("host-only", host="h:9000"),
        entry("host-bucket", bucket="b", host="h:9000"),
        entry("bucket-sub", bucket="b/sub"),
        entry("bucket", bucket="b"),
        entry("same-as-host", bucket="h.example.com"),
        entry("host-no-port", host="h.example.com"),
    )
    assert match_s3(s3, parse_url("s3://h:9000/b/x")).source == "host-bucket"
    assert match_s3(s3, parse_url("s3://h:9000/other/x")).source == "host-only"
    assert match_s3(s3, parse_url("s3://b/sub/x")).source == "bucket-sub"
    assert match_s3(s3, parse_url("s3://b/subway/x")).source == "bucket"
    assert match_s3(s3, parse_url("s3://b/x")).source == "bucket"
    # equal prefixes: the host entry wins over the bucket entry, whatever the config order
    assert match_s3(s3, parse_url("s3://h.example.com/x", s3)).source == "host-no-port"
    assert match_s3(s3, parse_url("s3://h.example.com/x")).source == "host-no-port"


def test_first_of_identical_entries_wins() -> None:
    s3 = s3_settings(entry("first", bucket="b"), entry("second", bucket="b"))
    assert match_s3(s3, parse_url("s3://b/x")).source == "first"


def test_s3_matching_is_case_insensitive_and_keeps_case() -> None:
    s3 = s3_settings(entry("e", bucket="MyBucket", host="MinIO:9000"))
    found = match_s3(s3, parse_url("s3://minio:9000/mybucket/Key"))
    assert found.source == "e"
    assert (found.host, found.bucket) == ("MinIO:9000", "MyBucket")
    assert match_s3(s3_settings(entry("b", bucket="Data")), parse_url("s3://DATA/x")).source == "b"


def test_no_match_uses_defaults_with_url_host_and_bucket() -> None:
    s3 = s3_settings(secure=False)
    aws = match_s3(s3, parse_url("s3://bucket/k"))
    assert (aws.source, aws.host, aws.bucket, aws.key) == (
        "sdk.aws.s3",
        "",
        "bucket",
        "default-key",
    )
    assert aws.endpoint_url is None
    other = match_s3(s3, parse_url("s3://other:9000/b2/k"))
    assert (other.host, other.bucket) == ("other:9000", "b2")
    assert other.endpoint_url == "http://other:9000"
    assert match_s3(s3_settings(), parse_url("s3://o:443/b")).endpoint_url == "https://o:443"


def test_entry_endpoint() -> None:
    assert entry("e", host="m:9000", secure=False).endpoint_url == "http://m:9000"
    assert entry("e", host="m:9000").endpoint_url == "https://m:9000"
    assert entry("e", bucket="b").endpoint_url is None


def test_catch_all_entry_serves_aws_urls_only() -> None:
    s3 = s3_settings(entry("bucket", bucket="b"), entry("catch-all"))
    assert match_s3(s3, parse_url("s3://b/x")).source == "bucket"
    assert match_s3(s3, parse_url("s3://anything/x")).source == "catch-all"
    assert match_s3(s3, parse_url("s3://h:9000/anything/x")).source == "sdk.aws.s3"


def test_matching_from_a_loaded_config(tmp_path: Path) -> None:
    path = tmp_path / "clearml.conf"
    path.write_text(
        """
        sdk.aws.s3 {
          key: dk, secret: ds
          credentials: [
            { host: "my-minio-host:9000", bucket: "special", key: a, secret: b, secure: false }
            { host: "my-minio-host:9000", key: c, secret: d, secure: false }
            { bucket: "data", key: e, secret: f, region: us-west-2 }
          ]
        }
        """
    )
    cfg = config.load(path, {"HOME": str(tmp_path)})
    s3 = cfg.s3

    def source(url: str) -> str:
        return match_s3(s3, parse_url(url, s3)).source

    assert source("s3://my-minio-host:9000/special/a") == "sdk.aws.s3.credentials[0]"
    assert source("s3://my-minio-host:9000/specialized/a") == "sdk.aws.s3.credentials[1]"
    assert source("s3://data/a") == "sdk.aws.s3.credentials[2]"
    assert source("s3://data-large/a") == "sdk.aws.s3"
    assert match_s3(s3, parse_url("s3://data/a")).region == "us-west-2"
    assert s3_roots(s3) == ("data", "my-minio-host:9000")
    assert s3_host_buckets(s3, "MY-MINIO-HOST:9000") == ("special",)
    text = describe_matches(cfg)
    assert "s3://my-minio-host:9000/special -> sdk.aws.s3.credentials[0]" in text
    assert "s3://data -> sdk.aws.s3.credentials[2] (AWS)" in text
    assert "ds" not in text.split()


# ------------------------------------------------------------------------------ Azure


def container(source: str, account: str, name: str = "") -> AzureContainer:
    return AzureContainer(source, account_name=account, account_key="k", container_name=name)


def test_azure_first_match_and_environment_last() -> None:
    az = AzureSettings(
        containers=(
            container("any-a", "a"),
            container("a-c1", "a", "c1"),
            container("b-c1", "b", "c1"),
            container("environment", "b"),
        )
    )
    host_a = "azure://a.blob.core.windows.net"
    # no "most specific" rule: the first entry that fits wins
    assert match_azure(az, parse_url(f"{host_a}/c1/x")).source == "any-a"  # type: ignore[union-attr]
    b = "azure://b.blob.core.windows.net"
    assert match_azure(az, parse_url(f"{b}/c1/x")).source == "b-c1"  # type: ignore[union-attr]
    assert match_azure(az, parse_url(f"{b}/c2/x")).source == "environment"  # type: ignore[union-attr]
    assert match_azure(az, parse_url("azure://z.blob.core.windows.net/c/x")) is None


def test_azure_names() -> None:
    az = AzureSettings(
        containers=(container("1", "a", "c2"), container("2", "a", "c1"), container("3", "b"))
    )
    assert azure_roots(az) == ("a.blob.core.windows.net", "b.blob.core.windows.net")
    assert azure_account_containers(az, "a.blob.core.windows.net") == ("c1", "c2")
    assert azure_account_containers(az, "b.blob.core.windows.net") == ()


# ------------------------------------------------------------------------------ GCS


def gcs_settings(*entries: GcsCredentials) -> GcsSettings:
    return GcsSettings(
        defaults=GcsCredentials("sdk.google.storage", project="p"), credentials=entries
    )


def test_gcs_subdir_on_segment_boundary_and_longest_first() -> None:
    gcs = gcs_settings(
        GcsCredentials("bucket", bucket="b1"),
        GcsCredentials("path-in", bucket="b1", subdir="path/in"),
        GcsCredentials("path", bucket="b1", subdir="path"),
    )
    assert match_gcs(gcs, parse_url("gs://b1/path/in/x")).source == "path-in"
    assert match_gcs(gcs, parse_url("gs://b1/path/in")).source == "path-in"
    assert match_gcs(gcs, parse_url("gs://b1/path/inner/x")).source == "path"
    assert match_gcs(gcs, parse_url("gs://b1/pathway")).source == "bucket"
    assert match_gcs(gcs, parse_url("gs://b1")).source == "bucket"


def test_gcs_is_case_sensitive_and_falls_back_to_defaults() -> None:
    gcs = gcs_settings(GcsCredentials("upper", bucket="B1", subdir="Dir"))
    # ClearML lowercases only the URL, so it never matches this entry; we do
    assert match_gcs(gcs, parse_url("gs://B1/Dir/x")).source == "upper"
    fallback = match_gcs(gcs, parse_url("gs://B1/dir/x"))
    assert (fallback.source, fallback.bucket, fallback.project) == ("sdk.google.storage", "B1", "p")
    assert gcs_roots(gcs) == ("B1",)
    assert gcs_roots(gcs_settings()) == ()


# ------------------------------------------------------------------------------ mount names


def test_s3_roots() -> None:
    s3 = s3_settings(
        entry("1", bucket="zeta"),
        entry("2", bucket="alpha/sub"),
        entry("3", bucket="b", host="MinIO:9000"),
        entry("4", bucket="a", host="minio:9000"),
        entry("5", bucket="Zeta"),
        entry("6", host="other:9000"),
        entry("7"),
    )
    assert s3_roots(s3) == ("MinIO:9000", "alpha", "other:9000", "zeta")
    assert s3_host_buckets(s3, "minio:9000") == ("a", "b")
    assert s3_host_buckets(s3, "other:9000") == ()
    assert s3_host_buckets(s3, "nowhere:1") == ()


# ------------------------------------------------------------------------------ endpoints


def test_only_endpoints_the_config_names_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "clearml.conf"
    path.write_text(
        """
        sdk.aws.s3 {
          key: dk, secret: ds
          credentials: [
            { host: "MinIO.internal:9000", bucket: "b", key: a, secret: b, secure: false }
            { host: "s3.example.com", key: c, secret: d }
            { bucket: "data", key: e, secret: f }
          ]
        }
        sdk.azure.storage.containers: [ { account_name: "acct", account_key: "k" } ]
        """
    )
    cfg = config.load(path, {"HOME": str(tmp_path)})

    def listed(url: str) -> bool:
        parsed = parse_url(url, cfg.s3)
        return endpoint_listed(parsed.scheme, parsed.host, cfg)

    # host entries, exactly as written (port included), case-insensitive; AWS itself
    assert listed("s3://minio.internal:9000/b/k") and listed("s3://MINIO.INTERNAL:9000/x/k")
    assert listed("s3://s3.example.com/any/k") and listed("s3://S3.Example.com/any/k")
    assert listed("s3://data/k") and listed("s3://any-aws-bucket/k")
    # without its port, a host is an AWS bucket name: AWS is asked, not that host
    assert parse_url("s3://minio.internal/b", cfg.s3).host == ""
    # the same host on another port, another host, a port the entry did not write
    for url in (
        "s3://minio.internal:9001/b/k",
        "s3://127.0.0.1:18999/latest/meta-data",
        "s3://[::1]:9000/b/k",
        "s3://s3.example.com:443/b/k",
    ):
        assert not listed(url), url
    assert listed("azure://acct.blob.core.windows.net/c/x")
    assert listed("azure://ACCT.blob.core.windows.net/c/x")
    assert not listed("azure://acct.evil.example:8443/c/x")
    assert not listed("azure://other.blob.core.windows.net/c/x")
    assert listed("gs://bucket/x") and listed("file:///etc/hostname")
    # a scheme without a rule of its own names no server
    assert not endpoint_listed("http", "files.example.com", cfg)


# ------------------------------------------------------------------------------ http(s)


def test_http_urls_are_host_and_raw_path() -> None:
    url = parse_url("https://files.clear.ml/proj/a%20b/x.pt")
    assert (url.scheme, url.host, url.bucket, url.key) == (
        "https",
        "files.clear.ml",
        "",
        "proj/a%20b/x.pt",
    )
    assert url.base_url == "https://files.clear.ml"
    assert str(url) == "https://files.clear.ml/proj/a%20b/x.pt"
    assert parse_url("http://h:8081").key == ""
    assert str(parse_url("http://h:8081")) == "http://h:8081"


def test_http_hosts_allowed_and_listed(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(
        """
        api.files_server: "http://Files-Host:8081"
        sdk.storage.http.hosts: ["https://public.example"]
        """
    )
    cfg = config.load(conf, {"HOME": str(tmp_path)})
    assert http_host_allowed(cfg, "http", "files-host:8081")
    assert http_host_allowed(cfg, "https", "public.example")
    assert http_host_allowed(cfg, "https", "files.community.clear.ml")  # ClearML's built-in
    assert not http_host_allowed(cfg, "https", "files-host:8081")  # another scheme
    assert not http_host_allowed(cfg, "http", "other:8081")
    assert http_roots(cfg, "http") == ("files-host:8081",)
    assert http_roots(cfg, "https") == ("public.example",)  # built-in defaults are not listed
    assert cfg.http.auth_for("http://files-host:8081/p/x") is not None
    assert cfg.http.auth_for("https://public.example/p/x") is None


# ------------------------------------------------------------------------------ the s3 host rule


@pytest.mark.parametrize(
    ("name", "host"),
    [
        ("bucket", False),
        ("my.bucket-1", False),
        ("minio:9000", True),
        ("10.0.0.1:9000", True),
        ("minio:abc", False),  # a port is a number: otherwise a bucket (S3 then refuses it)
        (":9000", False),
        ("minio:", False),
        ("minio-host", True),  # named by a host entry (its port in the config only)
        ("MINIO-HOST", True),  # case-insensitively
        ("other-host", False),
    ],
)
def test_an_s3_name_is_a_host_when_it_has_a_port_or_an_entry_names_it(
    name: str, host: bool
) -> None:
    s3 = s3_settings(entry("sdk.aws.s3.credentials[0]", host="minio-host", bucket="b"))
    assert is_s3_host(name, s3) is host
    # parse_url follows the same rule: a host is followed by the bucket
    parsed = parse_url(f"s3://{name}/first/key", s3)
    assert (parsed.host, parsed.bucket) == ((name, "first") if host else ("", name))


@pytest.mark.parametrize(
    ("rest", "path"),
    [("localhost/data/x", "/data/x"), ("/data/x", "/data/x"), ("localhostx/y", "localhostx/y")],
)
def test_file_localhost_is_the_local_host(rest: str, path: str) -> None:
    assert without_localhost(rest) == path
    if path.startswith("/"):
        assert parse_url(f"file://{rest}") == StorageURL("file", "", "", path.lstrip("/"))
