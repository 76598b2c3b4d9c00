"""Storage URLs: parsing, the URL <-> mount path mapping, and which config entry serves a URL.

Owns: `StorageURL` and `parse_url` (with `is_s3_host`, whether an s3 netloc is an endpoint,
and `without_localhost` for file URLs); `url_to_path`/`path_to_url` (a mount path is the URL with
"://" replaced by "/"); `match_s3`/`match_azure`/`match_gcs`; the names each scheme directory
lists (`s3_roots`, `azure_roots`, `gcs_roots`, `http_roots`, ...); `endpoint_listed`, whether
clearml.conf names the server a URL would be sent to (for http(s): `http_host_allowed`); and
`describe_matches`, the "which entry serves what" part of `clearmount config`.

Matching follows ClearML's `get_config_by_uri` (shared/reference/clearml-storage.md section 3)
with one deliberate difference: prefixes match whole path segments, so bucket "data" does not
serve s3://data-large/x and host entry "h:9000/special" does not serve s3://h:9000/specialized/x
(ClearML's plain string prefix does, and then asks for the wrong bucket). GCS matching is also
case-sensitive on both sides, where ClearML never matches an entry with an upper-case letter.
Keys are kept raw, never URL-decoded, exactly as ClearML stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clearmount.config import (
    AzureContainer,
    AzureSettings,
    Config,
    GcsCredentials,
    GcsSettings,
    S3Credentials,
    S3Settings,
)

SCHEMES = ("s3", "gs", "azure", "file", "http", "https")
HTTP_SCHEMES = ("http", "https")

AZURE_BLOB_SUFFIX = ".blob.core.windows.net"


@dataclass(frozen=True)
class StorageURL:
    #: "s3" | "gs" | "azure" | "file" | "http" | "https"
    scheme: str
    #: s3: "" for AWS, "host[:port]" for an endpoint; azure: "account.blob.core.windows.net";
    #: http(s): "host[:port]"; gs and file: ""
    host: str
    #: s3/gs bucket, azure container ("" at a host or account root); "" for file and http(s)
    bucket: str
    #: the object key, raw (not URL-decoded), "" at the bucket root; for file: the absolute
    #: path without its leading "/"
    key: str

    @property
    def base_url(self) -> str:
        """The bucket/container URL: "s3://b", "s3://h:9000/b", "gs://b", "azure://a.../c"."""
        if self.scheme == "file":
            return "file://"
        if self.scheme == "gs":
            return f"gs://{self.bucket}"
        if self.scheme in HTTP_SCHEMES:
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://" + "/".join(part for part in (self.host, self.bucket) if part)

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file:///{self.key}"
        return f"{self.base_url}/{self.key}" if self.key else self.base_url


def _has_port(netloc: str) -> bool:
    name, colon, port = netloc.rpartition(":")
    return bool(colon and name and port.isdigit())


def is_s3_host(name: str, s3: S3Settings | None = None) -> bool:
    """Whether `name`, the netloc of an s3:// URL (the first component under `s3/`), is an
    endpoint host followed by a bucket, rather than an AWS bucket: it has a numeric port, or
    it is, case-insensitively, the host of a credentials entry of `s3`. ClearML's rule: an
    endpoint that no entry names needs its port in the URL."""
    return _has_port(name) or name.lower() in _configured_hosts(s3)


def _configured_hosts(s3: S3Settings | None) -> set[str]:
    if s3 is None:
        return set()
    return {entry.host.lower() for entry in s3.credentials if entry.host}


def without_localhost(rest: str) -> str:
    """What follows "file://", with a "localhost" authority dropped: "localhost/x" -> "/x"
    (RFC 8089: file://localhost/x is file:///x)."""
    return rest[len("localhost") :] if rest.startswith("localhost/") else rest


def parse_url(url: str, s3: S3Settings | None = None) -> StorageURL:
    """Split a storage URL; ValueError for other schemes or a URL without a bucket/host.

    For s3, the netloc is an endpoint host (and the bucket the first path segment) when
    `is_s3_host` says so; otherwise it is an AWS bucket.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"unsupported URL {url!r}: expected s3://, gs://, azure://, http://, https:// "
            "or file:///path"
        )
    if scheme == "file":
        rest = without_localhost(rest)
        if not rest.startswith("/"):
            raise ValueError(f"unsupported URL {url!r}: a file URL is file:///absolute/path")
        return StorageURL("file", "", "", rest.lstrip("/"))
    netloc, _, path = rest.partition("/")
    if not netloc:
        raise ValueError(
            f"malformed URL {url!r}: no {'account' if scheme == 'azure' else 'bucket'}"
        )
    if scheme == "gs":
        return StorageURL("gs", "", netloc, path)
    if scheme in HTTP_SCHEMES:
        # a plain HTTP server: the host is the store, the path (raw, query included) the key
        return StorageURL(scheme, netloc, "", path)
    if scheme == "s3" and not is_s3_host(netloc, s3):
        return StorageURL("s3", "", netloc, path)
    # an s3 endpoint or an azure account: the bucket/container is the first path segment
    bucket, _, key = path.partition("/")
    if key and not bucket:
        raise ValueError(f"malformed URL {url!r}: empty bucket or container name")
    return StorageURL(scheme, netloc, bucket, key)


def url_to_path(url: str, s3: S3Settings | None = None) -> str:
    """The path relative to the mount point: "s3://b/k" -> "s3/b/k", "file:///x" -> "file/x"."""
    parsed = parse_url(url, s3)
    if parsed.scheme == "file":
        return f"file/{parsed.key}" if parsed.key else "file"
    scheme, _, rest = str(parsed).partition("://")
    return f"{scheme}/{rest}"


def path_to_url(rel_path: str) -> str:
    """The URL of a path relative to the mount point; the inverse of `url_to_path`.

    "s3/host:9000/bucket/k" -> "s3://host:9000/bucket/k": the path after the scheme is the URL
    after "://", so whether the first component is an endpoint is decided by `parse_url`.
    """
    scheme, _, rest = rel_path.lstrip("/").partition("/")
    if scheme not in SCHEMES:
        raise ValueError(f"{rel_path!r} is not under one of {', '.join(SCHEMES)}")
    if scheme == "file":
        return f"file:///{rest}"
    if not rest:
        raise ValueError(f"{rel_path!r} is a scheme directory, not a storage URL")
    return f"{scheme}://{rest}"


# ------------------------------------------------------------------------------ matching


def _url_segments(url: StorageURL) -> list[str]:
    head = [url.host] if url.host else []
    tail = url.key.split("/") if url.key else []
    return [*head, url.bucket, *tail]


def _s3_prefix(entry: S3Credentials) -> list[str]:
    bucket = entry.bucket.split("/") if entry.bucket else []
    return [entry.host, *bucket] if entry.host else bucket


def _starts_with(segments: list[str], prefix: list[str]) -> bool:
    return segments[: len(prefix)] == prefix


def match_s3(s3: S3Settings, url: StorageURL) -> S3Credentials:
    """The credentials ClearML would use for `url`, matched on whole path segments.

    The most specific entry wins (most prefix segments), host entries before bucket-only
    entries at equal length, then config order; case-insensitive. An entry with neither bucket
    nor host serves any AWS (host-less) URL no other entry matches. With no match: the
    defaults, pointed at the URL's host (if any) and bucket.
    """
    segments = [part.lower() for part in _url_segments(url)]
    candidates = sorted(
        enumerate(s3.credentials),
        key=lambda item: (-len(_s3_prefix(item[1])), not item[1].host, item[0]),
    )
    for _, entry in candidates:
        prefix = [part.lower() for part in _s3_prefix(entry)]
        if not prefix and url.host:
            # a catch-all entry has no endpoint: it cannot serve another server's buckets
            continue
        if _starts_with(segments, prefix):
            return entry
    return replace(s3.defaults, host=url.host, bucket=url.bucket)


def match_azure(az: AzureSettings, url: StorageURL) -> AzureContainer | None:
    """The first entry (config order, environment last) for the URL's account and container."""
    account = url.host.partition(".")[0].lower()
    for entry in az.containers:
        if entry.account_name.lower() == account and entry.container_name in ("", url.bucket):
            return entry
    return None


def _gcs_prefix(entry: GcsCredentials) -> list[str]:
    return [entry.bucket, *entry.subdir.split("/")] if entry.subdir else [entry.bucket]


def match_gcs(gcs: GcsSettings, url: StorageURL) -> GcsCredentials:
    """The entry with the longest bucket[/subdir] prefix of `url` (whole segments, case-
    sensitive; first in config order on a tie), else the defaults for the URL's bucket."""
    segments = _url_segments(url)
    best: GcsCredentials | None = None
    for entry in gcs.credentials:
        prefix = _gcs_prefix(entry)
        longer = best is None or len(prefix) > len(_gcs_prefix(best))
        if longer and _starts_with(segments, prefix):
            best = entry
    return best if best is not None else replace(gcs.defaults, bucket=url.bucket)


# ------------------------------------------------------------------------------ mount names


def _unique_sorted(names: list[str], fold: bool = True) -> tuple[str, ...]:
    # the first spelling of a name wins; "MinIO:9000" and "minio:9000" are one host
    seen: dict[str, str] = {}
    for name in names:
        if name:
            seen.setdefault(name.lower() if fold else name, name)
    return tuple(sorted(seen.values()))


def s3_roots(s3: S3Settings) -> tuple[str, ...]:
    """The names under s3/: buckets of bucket-only entries and hosts of host entries."""
    return _unique_sorted([entry.host or entry.bucket.split("/")[0] for entry in s3.credentials])


def s3_host_buckets(s3: S3Settings, host: str) -> tuple[str, ...]:
    """The buckets that host entries for `host` (case-insensitive) name."""
    return _unique_sorted(
        [
            entry.bucket.split("/")[0]
            for entry in s3.credentials
            if entry.host and entry.host.lower() == host.lower()
        ]
    )


def azure_roots(az: AzureSettings) -> tuple[str, ...]:
    """The names under azure/: "<account>.blob.core.windows.net" for every entry."""
    return _unique_sorted([entry.account_name + AZURE_BLOB_SUFFIX for entry in az.containers])


def azure_account_containers(az: AzureSettings, host: str) -> tuple[str, ...]:
    """The containers that entries for the account of `host` name."""
    account = host.partition(".")[0].lower()
    return _unique_sorted(
        [entry.container_name for entry in az.containers if entry.account_name.lower() == account],
        fold=False,
    )


def http_roots(config: Config, scheme: str) -> tuple[str, ...]:
    """The names under http/ or https/: the "host[:port]" of every http(s) host the config or
    the environment names (ClearML's built-in defaults are reachable but not listed)."""
    hosts = (*config.http.auth_hosts, *config.http.plain_hosts)
    return _unique_sorted(
        [
            host.origin.partition("://")[2]
            for host in hosts
            if host.listed and host.origin.startswith(scheme + "://")
        ]
    )


def http_host_allowed(config: Config, scheme: str, netloc: str) -> bool:
    """Whether `scheme://netloc` is a files-server host or in sdk.storage.http.hosts."""
    return config.http.host_entry(scheme, netloc) is not None


def gcs_roots(gcs: GcsSettings) -> tuple[str, ...]:
    """The names under gs/: the buckets of the credentials entries."""
    return _unique_sorted([entry.bucket for entry in gcs.credentials], fold=False)


# ------------------------------------------------------------------------------ endpoints


def endpoint_listed(scheme: str, host: str, config: Config) -> bool:
    """Whether clearml.conf names the server that a URL of `scheme` at `host` is sent to.

    `host` is the URL's netloc as `StorageURL.host` has it ("host[:port]", "" for none),
    compared case-insensitively and exactly (a host entry "minio:9000" names neither "minio"
    nor "minio:9001"). s3: AWS itself (no host) and the hosts of `credentials[]` host
    entries; azure: `<account>.blob.core.windows.net` of a configured account (the entry's
    `endpoint`, if any, is what is then contacted); gs and file name no server of their own.
    Any other scheme is unlisted until a branch here names its hosts. Whether an unlisted
    endpoint may be contacted anyway is the mount's choice (`allow_unlisted_endpoints`).
    """
    name = host.lower()
    if scheme == "s3":
        return not name or name in _configured_hosts(config.s3)
    if scheme == "azure":
        return name in {root.lower() for root in azure_roots(config.azure)}
    if scheme in HTTP_SCHEMES:
        return http_host_allowed(config, scheme, host)
    return scheme in ("gs", "file")


def describe_matches(config: Config) -> str:
    """For every configured bucket, host and container: the entry that serves it."""
    s3 = config.s3
    lines = []
    hosts = _configured_hosts(s3)
    for root in s3_roots(s3):
        if root.lower() in hosts:
            urls = [f"s3://{root}/{bucket}" for bucket in s3_host_buckets(s3, root)]
            urls = urls or [f"s3://{root}/<bucket>"]
        else:
            urls = [f"s3://{root}"]
        for text in urls:
            entry = match_s3(s3, parse_url(text, s3))
            lines.append(f"{text} -> {entry.source} ({entry.endpoint_url or 'AWS'})")
    for host in azure_roots(config.azure):
        for container in azure_account_containers(config.azure, host) or ("<container>",):
            text = f"azure://{host}/{container}"
            found = match_azure(config.azure, parse_url(text))
            lines.append(f"{text} -> {found.source if found else 'no credentials'}")
    for gcs_entry in config.gcs.credentials:
        text = "gs://" + "/".join(_gcs_prefix(gcs_entry))
        lines.append(f"{text} -> {match_gcs(config.gcs, parse_url(text)).source}")
    for http_host in (*config.http.auth_hosts, *config.http.plain_hosts):
        if not http_host.listed:
            continue
        auth = "files-server token" if config.http.auth_for(http_host.url) else "no credentials"
        lines.append(f"{http_host.url}/ -> {http_host.source} ({auth})")
    return "\n".join(lines) if lines else "(no buckets, hosts or containers configured)"
