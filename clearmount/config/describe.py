"""The effective configuration for humans (`clearmount config`), every secret masked.

Owns: `describe`, `describe_deadlines` and the masking rules (a key id shows at most its first
four characters; secrets, tokens, inline JSON credentials and SAS queries show as ****).
"""

from __future__ import annotations

from clearmount.config.schema import Config, Deadlines, S3Credentials
from clearmount.units import format_bytes


def _mask(secret: str | None) -> str:
    return "****" if secret else "(not set)"


def _mask_id(key: str) -> str:
    # an AWS key id is 20 characters; its first 4 tell a user which key it is, nothing more.
    # Shorter ids (MinIO users) are masked whole.
    if not key:
        return "(not set)"
    return key[:4] + "****" if len(key) >= 16 else "****"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _or_dash(value: str | None) -> str:
    return value if value else "-"


def _human_bytes(size: int | None) -> str:
    return "no limit" if size is None else f"{format_bytes(size)} ({size} bytes)"


def _describe_s3(entry: S3Credentials) -> str:
    verify = entry.verify if isinstance(entry.verify, str) else _yes(entry.verify is not False)
    return (
        f"bucket {_or_dash(entry.bucket)}, host {_or_dash(entry.host)}, "
        f"endpoint {entry.endpoint_url or 'AWS'}, key {_mask_id(entry.key)}, "
        f"secret {_mask(entry.secret)}, token {_mask(entry.token)}, "
        f"region {_or_dash(entry.region)}, profile {_or_dash(entry.profile)}, "
        f"credentials chain {_yes(entry.use_credentials_chain)}, secure {_yes(entry.secure)}, "
        f"multipart {_yes(entry.multipart)}, verify {verify}"
    )


def _describe_gcs_json(value: str | None) -> str:
    if not value:
        return "(Google default credentials)"
    # a path is not a secret, the JSON itself is
    return "**** (inline JSON)" if value.lstrip().startswith("{") else value


def _describe_endpoint(endpoint: str) -> str:
    if not endpoint:
        return "default"
    base, query, _ = endpoint.partition("?")
    return base + ("?****" if query else "")


def _describe_timeout(name: str, seconds: float, key: str, is_set: bool) -> str:
    if is_set:
        where = f"clearml.conf {key}"
    elif key:
        where = f"mount default; clearml.conf {key} unset"
    else:
        where = "mount default; no clearml.conf key"
    return f"{name} {seconds:g}s ({where})"


def describe_deadlines(d: Deadlines) -> str:
    """One backend's deadlines and where each came from, for `clearmount config`."""
    return (
        f"{_describe_timeout('connect_timeout', d.connect, d.connect_key, d.connect_set)}, "
        f"{_describe_timeout('read_timeout', d.read, d.read_key, d.read_set)}; "
        f"a lookup gives up after {d.operation:g}s; a download is stalled below 1 MiB per "
        f"{d.stall_window:g}s, and given up after {d.operation:g}s without 1 MiB"
    )


def describe(config: Config) -> str:
    """The effective configuration for humans (`clearmount config`), every secret masked."""
    lines = ["files (merge order, later wins):"]
    lines += [f"  {path}" for path in config.files] or ["  (none: defaults and environment only)"]
    if config.warnings:
        lines.append("warnings:")
        lines += [f"  {warning}" for warning in config.warnings]

    s3 = config.s3
    lines.append("s3:")
    lines.append(f"  defaults ({s3.defaults.source}): {_describe_s3(s3.defaults)}")
    lines += [f"  {entry.source}: {_describe_s3(entry)}" for entry in s3.credentials]
    b = s3.boto3
    lines.append(
        f"  boto3: pool_connections {b.pool_connections}, "
        f"max_multipart_concurrency {b.max_multipart_concurrency}, "
        f"multipart_threshold {b.multipart_threshold}, "
        f"multipart_chunksize {b.multipart_chunksize}, "
        f"signature_version {b.signature_version or 'default'}, "
        f"addressing_style {b.addressing_style or 'default'}"
    )
    lines.append(f"  deadlines: {describe_deadlines(b.deadlines)}")

    lines.append(f"azure: max_connections {config.azure.max_connections or 'default'}")
    lines.append(f"  deadlines: {describe_deadlines(config.azure.deadlines)}")
    lines += [
        f"  {c.source}: account {c.account_name}, container {c.container_name or '(any)'}, "
        f"key {_mask(c.account_key)}, endpoint {_describe_endpoint(c.endpoint)}"
        for c in config.azure.containers
    ] or ["  (no containers)"]

    gcs = config.gcs
    lines.append("gcs:")
    lines.append(f"  deadlines: {describe_deadlines(gcs.deadlines)}")
    lines.append(
        f"  defaults ({gcs.defaults.source}): project {_or_dash(gcs.defaults.project)}, "
        f"credentials_json {_describe_gcs_json(gcs.defaults.credentials_json)}"
    )
    lines += [
        f"  {g.source}: bucket {g.bucket}, subdir {_or_dash(g.subdir)}, "
        f"project {_or_dash(g.project)}, credentials_json {_describe_gcs_json(g.credentials_json)}"
        for g in gcs.credentials
    ]

    lines.append("direct access:")
    lines += [f"  {rule.source}: {rule.url}" for rule in config.direct_access] or ["  (none)"]
    if config.path_substitution:
        lines.append("path substitution:")
        lines += [
            f"  {p.source}: {p.registered_prefix} -> {p.local_prefix}"
            + (" (\\ -> /)" if p.replace_windows_sep else "")
            + (" (/ -> \\)" if p.replace_linux_sep else "")
            for p in config.path_substitution
        ]
    http = config.http
    lines.append(
        f"http: api_server {http.api_server}, access_key {_mask(http.access_key)}, "
        f"secret_key {_mask(http.secret_key)}, max_retries {http.max_retries}"
    )
    lines.append(f"  {describe_deadlines(http.deadlines)}")
    lines.append("  files-server hosts (ClearML's Bearer token from auth.login):")
    lines += [f"    {host.url} ({host.source})" for host in http.auth_hosts] or ["    (none)"]
    lines.append("  other hosts (no credentials):")
    lines += [f"    {host.url} ({host.source})" for host in http.plain_hosts] or ["    (none)"]
    cache = config.cache
    lines.append(
        f"cache: {cache.base_dir}, max_used_bytes {_human_bytes(cache.max_used_bytes)}, "
        f"min_free_bytes {_human_bytes(cache.min_free_bytes)}"
    )
    if cache.disk_strategy:
        lines.append(
            f"  layout: ClearML 2.x disk-space strategy, {cache.base_dir}/storage/<scheme>/"
            f"<host>/<path> (on by {cache.disk_strategy_source}); evicted by access time, "
            f"margin {cache.cleanup_margin:.0%}"
        )
    else:
        why = f" (off by {cache.disk_strategy_source})" if cache.disk_strategy_source else ""
        lines.append(
            f"  layout: ClearML CacheManager, {cache.base_dir}/storage_manager/global/"
            f"<md5(url)>.<name>{why}"
        )
    l2 = cache.secondary
    if l2 is not None:
        lines.append(
            f"  shared L2 cache: {l2.base_dir}/storage ({l2.source}), max_used_bytes "
            f"{_human_bytes(l2.max_used_bytes)}, min_free_bytes {_human_bytes(l2.min_free_bytes)}"
        )
    return "\n".join(lines)
