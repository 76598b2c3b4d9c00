"""ClearML's rules: the parsed files turned into the settings of `schema.py`.

Owns: merging the files (later wins), reading the merged tree the way the ClearML SDK reads
it, validation with one-line warnings that name file and key, the environment fallbacks
(AWS_*, AZURE_STORAGE_*, GOOGLE_APPLICATION_CREDENTIALS, CLEARML_*), and `load`. The
ClearML behaviour reproduced here is in shared/reference/clearml-storage.md, sections 1-2.

Deliberate differences from the ClearML SDK, each reported as a warning:
- the bare form (`aws {}`, `azure.storage {}`, `google.storage {}`, `storage {}` at the top
  level) is read as if it were inside `sdk {}`; ClearML ignores it;
- an unknown key is skipped (ClearML fails with TypeError on an unknown credentials key);
- a quoted `secure: "false"` (any boolean given as a string) means false; ClearML treats every
  non-empty string as true;
- a credentials entry that ClearML drops silently is dropped with a warning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from clearmount.config.hocon import expand_path, find_config_files, parse_file
from clearmount.config.schema import (
    MOUNT_CONNECT_TIMEOUT,
    MOUNT_READ_TIMEOUT,
    AzureContainer,
    AzureSettings,
    Boto3Settings,
    CacheSettings,
    Config,
    DirectAccessRule,
    GcsCredentials,
    GcsSettings,
    HttpHost,
    HttpSettings,
    PathSubstitution,
    S3Credentials,
    S3Settings,
    SecondarySettings,
    lower_origin,
    parse_size,
)

# ------------------------------------------------------------------------------ merging

Key = tuple[str | int, ...]

#: top-level sections of the docs' bare form, read as if inside sdk { }
_BARE_SECTIONS = ("aws", "azure", "google", "storage")


class _Tree:
    """The merged tree plus, for every assignment, the file it came from (for warnings)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        # path -> (file, came from the bare form); the longest recorded prefix of a key wins
        self.origin: dict[Key, tuple[Path, bool]] = {}

    def merge_file(self, data: dict[str, Any], path: Path) -> list[str]:
        notes = []
        bare = {name: data.pop(name) for name in _BARE_SECTIONS if name in data}
        for name in bare:
            notes.append(
                f"{path}: {name}: outside sdk {{ }}; the ClearML SDK ignores it, "
                f"clearmount reads it as sdk.{name}"
            )
        if bare:
            if not isinstance(self.data.get("sdk"), dict):
                self._assign(self.data, ("sdk",), {}, path, bare=False)
            # within one file the sdk { } form is the real one, so it is merged last and wins
            self._merge(self.data["sdk"], ("sdk",), bare, path, bare=True)
        self._merge(self.data, (), data, path, bare=False)
        return notes

    def _merge(
        self, target: dict[str, Any], at: Key, source: dict[str, Any], path: Path, bare: bool
    ) -> None:
        for name, value in source.items():
            here = (*at, name)
            current = target.get(name)
            if isinstance(value, dict) and isinstance(current, dict):
                self._merge(current, here, value, path, bare)
            else:
                # HOCON merge: objects merge deeply, anything else (lists too) is replaced
                self._assign(target, here, value, path, bare)

    def _assign(
        self, target: dict[str, Any], here: Key, value: Any, path: Path, bare: bool
    ) -> None:
        target[str(here[-1])] = value
        for stale in [key for key in self.origin if key[: len(here)] == here]:
            del self.origin[stale]
        self.origin[here] = (path, bare)

    def where(self, key: Key) -> str:
        for length in range(len(key), 0, -1):
            found = self.origin.get(key[:length])
            if found is not None:
                path, bare = found
                shown = key[1:] if bare and key[:1] == ("sdk",) else key
                return f"{path}: {dotted(shown)}"
        return dotted(key)


def dotted(key: Key) -> str:
    """("sdk", "aws", "s3", "credentials", 2) -> "sdk.aws.s3.credentials[2]"."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


# ------------------------------------------------------------------------------ reading values

_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "an unresolved value"


def _shown(value: Any) -> str:
    """A scalar for a warning, short and on one line (never used for secrets)."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Typed, lenient access to the merged tree: junk becomes the default plus a warning."""

    def __init__(self, tree: _Tree, warnings: list[str]) -> None:
        self.tree = tree
        self.warnings = warnings

    def warn(self, key: Key, message: str) -> None:
        line = f"{self.tree.where(key)}: {message}"
        self.warnings.append(line.replace("\r", "\\r").replace("\n", "\\n"))

    def section(
        self, parent: dict[str, Any], at: Key, name: str, known: frozenset[str] | None = None
    ) -> dict[str, Any]:
        """parent[name] as an object ({} if absent), warning about keys not in `known`."""
        value = parent.get(name)
        here = (*at, name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.warn(here, f"expected an object {{ }}, got {_kind(value)}; ignored")
            return {}
        if known is not None:
            self.check_keys(value, here, known, "unknown key, ignored")
        return value

    def check_keys(self, obj: dict[str, Any], at: Key, known: frozenset[str], why: str) -> None:
        for name in obj:
            if name not in known:
                self.warn((*at, name), why)

    def entries(
        self, parent: dict[str, Any], at: Key, name: str
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """The objects of the list parent[name], with their index; anything else is warned of."""
        value = parent.get(name)
        here = (*at, name)
        if value is None:
            return
        if not isinstance(value, list):
            self.warn(here, f"expected a list [ ], got {_kind(value)}; ignored")
            return
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield index, item
            else:
                self.warn(
                    (*here, index), f"expected an object {{ }}, got {_kind(item)}; entry ignored"
                )

    def string(
        self, obj: dict[str, Any], at: Key, name: str, default: str = "", secret: bool = False
    ) -> str:
        value = obj.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            return value
        # an unquoted 2024 is a number in HOCON, and a fine bucket name
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        shown = f" {_shown(value)}" if isinstance(value, bool) and not secret else ""
        self.warn((*at, name), f"expected a string, got {_kind(value)}{shown}; ignored")
        return default

    def boolean(self, obj: dict[str, Any], at: Key, name: str, default: bool) -> bool:
        value = obj.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                self.warn(
                    (*at, name),
                    f"{_shown(value)} is a string, which the ClearML SDK treats as true; "
                    f"clearmount reads it as false (write {name}: false, unquoted)",
                )
                return False
        got = _shown(value) if _is_scalar(value) else _kind(value)
        self.warn((*at, name), f"expected true or false, got {got}; using {str(default).lower()}")
        return default

    def number(
        self,
        obj: dict[str, Any],
        at: Key,
        name: str,
        default: float,
        minimum: float = 0,
        size: bool = False,
    ) -> float:
        """A number >= minimum; `size` also accepts human sizes ("8MB")."""
        value = obj.get(name)
        if value is None:
            return default
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = parse_size(value) if size else float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number < minimum:
            got = _shown(value) if _is_scalar(value) else _kind(value)
            self.warn(
                (*at, name), f"expected a number >= {minimum:g}, got {got}; using {default:g}"
            )
            return default
        return number

    def integer(
        self,
        obj: dict[str, Any],
        at: Key,
        name: str,
        default: int,
        minimum: int = 0,
        size: bool = False,
    ) -> int:
        number = self.number(obj, at, name, default, minimum, size)
        return int(number)

    def byte_limit(self, obj: dict[str, Any], at: Key, name: str) -> int | None:
        """A byte size; absent, null or negative (ClearML's -1) means no limit."""
        value = obj.get(name)
        if value is None:
            return None
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and math.isfinite(value):
            number = int(value)
        elif isinstance(value, str):
            try:
                number = parse_size(value)
            except ValueError:
                number = None
        if number is None:
            got = _shown(value) if _is_scalar(value) else _kind(value)
            self.warn((*at, name), f"expected a size such as 50GB or 10GiB, got {got}; no limit")
            return None
        return None if number < 0 else number


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _strip_name(text: str) -> str:
    """ClearML's bucket/subdir clean-up: surrounding quotes and trailing slashes go."""
    return text.strip().strip("\"'").rstrip("/")


# ------------------------------------------------------------------------------ sections

_ENTRY_UNKNOWN = "unknown key, ignored (the ClearML SDK fails with TypeError on it)"

_AWS_KEYS = frozenset({"s3", "boto3"})
_S3_KEYS = frozenset(
    {"key", "secret", "token", "region", "profile", "use_credentials_chain", "extra_args"}
    | {"secure", "verify", "credentials"}
)
_S3_ENTRY_KEYS = frozenset(
    {"bucket", "subdir", "host", "key", "secret", "token", "multipart", "acl", "secure"}
    | {"region", "verify", "use_credentials_chain", "extra_args", "profile"}
)
_BOTO3_KEYS = frozenset(
    {"pool_connections", "max_multipart_concurrency", "multipart_threshold"}
    | {"multipart_chunksize", "connect_timeout", "read_timeout", "signature_version", "s3"}
    | {"stream_connections"}
)
_ADDRESSING_STYLES = ("path", "virtual", "auto")
_AZURE_KEYS = frozenset({"max_connections", "containers"})
_AZURE_ENTRY_KEYS = frozenset({"account_name", "account_key", "container_name", "endpoint"})
_GCS_KEYS = frozenset(
    {"project", "credentials_json", "pool_connections", "pool_maxsize", "stream_connections"}
    | {"credentials"}
)
_GCS_ENTRY_KEYS = frozenset(
    {"bucket", "subdir", "project", "credentials_json", "pool_connections", "pool_maxsize"}
)
_STORAGE_KEYS = frozenset(
    {"cache", "direct_access", "path_substitution", "http", "log", "block_pickled_artifacts"}
)
_CACHE_KEYS = frozenset(
    {"default_base_dir", "default_cache_manager_size", "disk_space_file_size_strategy"}
    | {"cleanup_seconds_threshold", "max_cleanup_attempts", "enable", "size"}
    | {"zero_file_size_check", "secondary"}
)
_SIZE_KEYS = frozenset({"max_used_bytes", "min_free_bytes", "cleanup_margin_percent"})
_DIRECT_ACCESS_KEYS = frozenset({"url", "content_type"})
_SUBSTITUTION_KEYS = frozenset(
    {"registered_prefix", "local_prefix", "replace_windows_sep", "replace_linux_sep"}
)
_CA_URL_SCHEMES = ("s3://", "gs://", "azure://", "http://", "https://", "file://")

_SDK: Key = ("sdk",)


def _read_s3(r: _Reader, aws: dict[str, Any], environ: Mapping[str, str]) -> S3Settings:
    at: Key = (*_SDK, "aws", "s3")
    s3 = r.section(aws, at[:-1], "s3", _S3_KEYS)
    if s3.get("verify") is not None:
        r.warn(
            (*at, "verify"),
            "ignored by ClearML (only a credentials entry's verify is used); ignored here too",
        )
    key = r.string(s3, at, "key", secret=True)
    from_environment = not key and bool(environ.get("AWS_ACCESS_KEY_ID"))
    defaults = S3Credentials(
        source="environment" if from_environment else dotted(at),
        key=key or environ.get("AWS_ACCESS_KEY_ID", ""),
        secret=r.string(s3, at, "secret", secret=True) or environ.get("AWS_SECRET_ACCESS_KEY", ""),
        token=r.string(s3, at, "token", secret=True) or environ.get("AWS_SESSION_TOKEN", ""),
        region=r.string(s3, at, "region") or environ.get("AWS_DEFAULT_REGION", ""),
        profile=r.string(s3, at, "profile") or environ.get("AWS_PROFILE", ""),
        secure=r.boolean(s3, at, "secure", True),
        use_credentials_chain=r.boolean(s3, at, "use_credentials_chain", False),
    )
    entries = []
    for index, entry in r.entries(s3, at, "credentials"):
        parsed = _read_s3_entry(r, entry, (*at, "credentials", index))
        if parsed is not None:
            entries.append(parsed)
    boto3 = _read_boto3(r, r.section(aws, at[:-1], "boto3", _BOTO3_KEYS), (*_SDK, "aws", "boto3"))
    return S3Settings(defaults=defaults, credentials=tuple(entries), boto3=boto3)


def _read_s3_entry(r: _Reader, entry: dict[str, Any], at: Key) -> S3Credentials | None:
    r.check_keys(entry, at, _S3_ENTRY_KEYS, _ENTRY_UNKNOWN)
    secure = r.boolean(entry, at, "secure", True)
    host = _strip_name(r.string(entry, at, "host"))
    scheme, sep, rest = host.partition("://")
    if sep:
        # ClearML would build "https://http://..."; the intent is plain, so follow it
        if entry.get("secure") is None:
            secure = scheme.lower() != "http"
        host = rest.rstrip("/")
        r.warn(
            (*at, "host"),
            f'must be "host[:port]" without a scheme; using {_shown(host)} '
            f"with secure: {str(secure).lower()}",
        )
    key = r.string(entry, at, "key", secret=True)
    secret = r.string(entry, at, "secret", secret=True)
    chain = r.boolean(entry, at, "use_credentials_chain", False)
    if not chain and not (key and secret):
        r.warn(at, "no key/secret and no use_credentials_chain; entry ignored")
        return None
    bucket = _strip_name(r.string(entry, at, "bucket"))
    if not bucket and not host:
        r.warn(at, "neither bucket nor host: it serves every s3:// URL no other entry matches")
    return S3Credentials(
        source=dotted(at),
        bucket=bucket,
        host=host,
        key=key,
        secret=secret,
        token=r.string(entry, at, "token", secret=True),
        region=r.string(entry, at, "region"),
        profile=r.string(entry, at, "profile"),
        multipart=r.boolean(entry, at, "multipart", True),
        secure=secure,
        verify=_read_verify(r, entry, at),
        use_credentials_chain=chain,
    )


def _read_verify(r: _Reader, entry: dict[str, Any], at: Key) -> bool | str | None:
    value = entry.get("verify")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return r.boolean(entry, at, "verify", True)
    if isinstance(value, str) and value.strip():
        if value.strip().lower().startswith(_CA_URL_SCHEMES):
            r.warn((*at, "verify"), "a CA bundle URL is not supported (use a local path); ignored")
            return None
        return value.strip()
    r.warn(
        (*at, "verify"), f"expected true, false or a CA bundle path, got {_kind(value)}; ignored"
    )
    return None


def _read_boto3(r: _Reader, boto3: dict[str, Any], at: Key) -> Boto3Settings:
    defaults = Boto3Settings()
    s3 = r.section(boto3, at, "s3")
    r.check_keys(
        s3, (*at, "s3"), frozenset({"addressing_style"}), "not used by clearmount, ignored"
    )
    style = r.string(s3, (*at, "s3"), "addressing_style") or None
    if style is not None and style not in _ADDRESSING_STYLES:
        r.warn(
            (*at, "s3", "addressing_style"),
            f"expected one of {', '.join(_ADDRESSING_STYLES)}, got {_shown(style)}; ignored",
        )
        style = None
    connect_timeout, connect_set = _read_timeout(
        r, boto3, at, "connect_timeout", defaults.connect_timeout
    )
    read_timeout, read_set = _read_timeout(r, boto3, at, "read_timeout", defaults.read_timeout)
    return Boto3Settings(
        pool_connections=max(
            defaults.pool_connections,
            r.integer(boto3, at, "pool_connections", defaults.pool_connections, minimum=1),
        ),
        max_multipart_concurrency=r.integer(
            boto3, at, "max_multipart_concurrency", defaults.max_multipart_concurrency, minimum=1
        ),
        multipart_threshold=r.integer(
            boto3, at, "multipart_threshold", defaults.multipart_threshold, minimum=1, size=True
        ),
        multipart_chunksize=r.integer(
            boto3, at, "multipart_chunksize", defaults.multipart_chunksize, minimum=1, size=True
        ),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        signature_version=r.string(boto3, at, "signature_version") or None,
        addressing_style=style,
        connect_timeout_set=connect_set,
        read_timeout_set=read_set,
    )


def _read_timeout(
    r: _Reader, obj: dict[str, Any], at: Key, name: str, default: float
) -> tuple[float, bool]:
    """A timeout in seconds, and whether clearml.conf set it (a value it rejects is unset)."""
    warnings = len(r.warnings)
    value = r.number(obj, at, name, default, 0.001)
    return value, obj.get(name) is not None and len(r.warnings) == warnings


def _read_azure(r: _Reader, sdk: dict[str, Any], environ: Mapping[str, str]) -> AzureSettings:
    azure = r.section(sdk, _SDK, "azure", frozenset({"storage"}))
    at: Key = (*_SDK, "azure", "storage")
    storage = r.section(azure, at[:-1], "storage", _AZURE_KEYS)
    containers = []
    for index, entry in r.entries(storage, at, "containers"):
        here = (*at, "containers", index)
        r.check_keys(entry, here, _AZURE_ENTRY_KEYS, _ENTRY_UNKNOWN)
        account = r.string(entry, here, "account_name").strip()
        key = r.string(entry, here, "account_key", secret=True)
        if not account or not key:
            r.warn(here, "needs both account_name and account_key; entry ignored")
            continue
        endpoint, query_sep, _ = r.string(entry, here, "endpoint").strip().partition("?")
        if query_sep:
            # a SAS token would be a second credential, and a secret kept in plain sight
            r.warn(
                (*here, "endpoint"),
                "query string (SAS) not supported, dropped; account_key is used",
            )
        endpoint = endpoint.rstrip("/")
        if endpoint and not endpoint.lower().startswith(("http://", "https://")):
            r.warn((*here, "endpoint"), "expected an http:// or https:// URL; ignored")
            endpoint = ""
        containers.append(
            AzureContainer(
                source=dotted(here),
                account_name=account,
                account_key=key,
                container_name=_strip_name(r.string(entry, here, "container_name")),
                endpoint=endpoint,
            )
        )
    account = environ.get("AZURE_STORAGE_ACCOUNT", "")
    key = environ.get("AZURE_STORAGE_KEY", "")
    if account and key:
        containers.append(AzureContainer("environment", account_name=account, account_key=key))
    return AzureSettings(
        containers=tuple(containers),
        max_connections=r.integer(storage, at, "max_connections", 0),
    )


def _read_gcs(r: _Reader, sdk: dict[str, Any], environ: Mapping[str, str]) -> GcsSettings:
    google = r.section(sdk, _SDK, "google", frozenset({"storage"}))
    at: Key = (*_SDK, "google", "storage")
    storage = r.section(google, at[:-1], "storage", _GCS_KEYS)
    credentials_json = _read_credentials_json(r, storage, at)
    from_environment = credentials_json is None and bool(
        environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    )
    defaults = GcsCredentials(
        source="environment" if from_environment else dotted(at),
        project=r.string(storage, at, "project") or None,
        credentials_json=credentials_json or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None,
    )
    entries = []
    for index, entry in r.entries(storage, at, "credentials"):
        here = (*at, "credentials", index)
        r.check_keys(entry, here, _GCS_ENTRY_KEYS, _ENTRY_UNKNOWN)
        bucket = _strip_name(r.string(entry, here, "bucket"))
        if not bucket:
            r.warn(here, "no bucket; entry ignored")
            continue
        entries.append(
            GcsCredentials(
                source=dotted(here),
                bucket=bucket,
                subdir=_strip_name(r.string(entry, here, "subdir")).strip("/"),
                project=r.string(entry, here, "project") or None,
                credentials_json=_read_credentials_json(r, entry, here),
            )
        )
    return GcsSettings(defaults=defaults, credentials=tuple(entries))


def _read_credentials_json(r: _Reader, obj: dict[str, Any], at: Key) -> str | None:
    value = obj.get("credentials_json")
    if isinstance(value, dict):
        # raw service-account JSON written as a HOCON object is still that JSON
        return json.dumps(value)
    return r.string(obj, at, "credentials_json", secret=True) or None


def _read_storage(
    r: _Reader, sdk: dict[str, Any], environ: Mapping[str, str]
) -> tuple[tuple[DirectAccessRule, ...], tuple[PathSubstitution, ...], CacheSettings]:
    at: Key = (*_SDK, "storage")
    storage = r.section(sdk, _SDK, "storage", _STORAGE_KEYS)

    rules: tuple[DirectAccessRule, ...] = (DirectAccessRule("default", "file://*"),)
    if isinstance(storage.get("direct_access"), list):
        found = []
        for index, entry in r.entries(storage, at, "direct_access"):
            here = (*at, "direct_access", index)
            r.check_keys(entry, here, _DIRECT_ACCESS_KEYS, "unknown key, ignored")
            url = entry.get("url")
            if isinstance(url, str) and url:
                found.append(DirectAccessRule(dotted(here), url))
            elif url is None and "content_type" in entry:
                r.warn(here, "content_type rules are not used by clearmount; entry ignored")
            else:
                r.warn((*here, "url"), "expected a glob string; entry ignored")
        rules = tuple(found)
    elif storage.get("direct_access") is not None:
        r.warn((*at, "direct_access"), 'expected a list [ ]; using [{url: "file://*"}]')

    substitutions = []
    for index, entry in r.entries(storage, at, "path_substitution"):
        here = (*at, "path_substitution", index)
        r.check_keys(entry, here, _SUBSTITUTION_KEYS, "unknown key, ignored")
        registered = r.string(entry, here, "registered_prefix")
        local = r.string(entry, here, "local_prefix")
        if not registered or not local:
            r.warn(here, "needs both registered_prefix and local_prefix; entry ignored")
            continue
        substitutions.append(
            PathSubstitution(
                source=dotted(here),
                registered_prefix=registered,
                local_prefix=local,
                replace_windows_sep=r.boolean(entry, here, "replace_windows_sep", False),
                replace_linux_sep=r.boolean(entry, here, "replace_linux_sep", False),
            )
        )
    return rules, tuple(substitutions), _read_cache(r, storage, (*at, "cache"), environ)


def _read_cache(
    r: _Reader, storage: dict[str, Any], at: Key, environ: Mapping[str, str]
) -> CacheSettings:
    cache = r.section(storage, at[:-1], "cache", _CACHE_KEYS)
    configured = r.string(cache, at, "default_base_dir")
    text = (
        environ.get("CLEARML_CACHE_DIR")
        or environ.get("TRAINS_CACHE_DIR")
        or configured
        or "~/.clearml/cache"
    )
    base_dir = expand_path(text, environ)
    strategy_at: Key = (*at, "disk_space_file_size_strategy")
    strategy = r.section(cache, at, "disk_space_file_size_strategy")

    # ClearML 2.1.12 `_resolve_disk_strategy_enabled`: the flag decides when set; else the
    # legacy sections sdk.storage.cache.size / .secondary (non-empty) turn the strategy on
    enabled, source = False, ""
    if strategy.get("enabled") is not None:
        enabled = r.boolean(strategy, strategy_at, "enabled", False)
        source = dotted((*strategy_at, "enabled"))
    else:
        for legacy in ("size", "secondary"):
            if cache.get(legacy):
                enabled, source = True, f"{dotted((*at, legacy))} (legacy section)"
                break

    # each size key: the strategy's spelling when present, else the legacy one (per key, as
    # the SDK's `_resolved_disk_config_key`)
    sizes = [
        ((*at, "size"), r.section(cache, at, "size", _SIZE_KEYS)),
        ((*strategy_at, "size"), r.section(strategy, strategy_at, "size", _SIZE_KEYS)),
    ]
    limits = _size_limits(r, sizes)
    margin = _margin(r, sizes, 0.05)
    threshold = r.number(cache, at, "cleanup_seconds_threshold", 20.0)
    return CacheSettings(
        base_dir=base_dir,
        max_used_bytes=limits.get("max_used_bytes"),
        min_free_bytes=limits.get("min_free_bytes"),
        disk_strategy=enabled,
        disk_strategy_source=source,
        cleanup_margin=margin,
        cleanup_seconds_threshold=threshold,
        secondary=_read_secondary(r, cache, at, strategy, environ, limits, margin)
        if enabled
        else None,
    )


def _size_limits(r: _Reader, sizes: list[tuple[Key, dict[str, Any]]]) -> dict[str, int | None]:
    """max_used_bytes / min_free_bytes from `sizes` (later entries win, per key)."""
    limits: dict[str, int | None] = {}
    for size_at, size in sizes:
        for name in ("max_used_bytes", "min_free_bytes"):
            if name in size:
                limits[name] = r.byte_limit(size, size_at, name)
    return limits


def _margin(r: _Reader, sizes: list[tuple[Key, dict[str, Any]]], default: float) -> float:
    """cleanup_margin_percent as a fraction, read as ClearML's `get_percentage` reads it
    ("5%", 5 and 0.05 are all 5 %), capped to [0, 0.99] as its eviction caps it."""
    margin = default
    for size_at, size in sizes:
        value = size.get("cleanup_margin_percent")
        if value is None:
            continue
        text = str(value).strip()
        try:
            number = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
            if not text.endswith("%") and number >= 1:
                number /= 100
        except ValueError:
            r.warn((*size_at, "cleanup_margin_percent"), f"expected a percentage, got {text!r}")
            continue
        margin = min(0.99, max(0.0, number))
    return margin


def _read_secondary(
    r: _Reader,
    cache: dict[str, Any],
    at: Key,
    strategy: dict[str, Any],
    environ: Mapping[str, str],
    l1_limits: dict[str, int | None],
    l1_margin: float,
) -> SecondarySettings | None:
    """ClearML 2.1's `_get_cache_dir("secondary")` and its size keys: the strategy's
    secondary section, else sdk.storage.cache.secondary, else the L1's own values."""
    strategy_at: Key = (*at, "disk_space_file_size_strategy")
    nested_at: Key = (*strategy_at, "secondary")
    nested = r.section(strategy, strategy_at, "secondary")
    legacy_at: Key = (*at, "secondary")
    legacy = r.section(cache, at, "secondary")
    text, source = environ.get("CLEARML_SECONDARY_CACHE_DIR", ""), "CLEARML_SECONDARY_CACHE_DIR"
    if not text:
        text, source = r.string(nested, nested_at, "default_base_dir"), dotted(nested_at)
    if not text:
        text, source = r.string(legacy, legacy_at, "default_base_dir"), dotted(legacy_at)
    if not text:
        return None
    legacy_strategy_at: Key = (*legacy_at, "disk_space_file_size_strategy")
    legacy_strategy = r.section(legacy, legacy_at, "disk_space_file_size_strategy")
    sizes = [
        ((*legacy_at, "size"), r.section(legacy, legacy_at, "size", _SIZE_KEYS)),
        (
            (*legacy_strategy_at, "size"),
            r.section(legacy_strategy, legacy_strategy_at, "size", _SIZE_KEYS),
        ),
        ((*nested_at, "size"), r.section(nested, nested_at, "size", _SIZE_KEYS)),
    ]
    limits = {**l1_limits, **_size_limits(r, sizes)}
    # the strategy's secondary section, else the legacy one (as the SDK's `_config`)
    threshold = 60.0
    for section, section_at in ((legacy, legacy_at), (nested, nested_at)):
        if section.get("cleanup_seconds_threshold") is not None:
            threshold = r.number(section, section_at, "cleanup_seconds_threshold", threshold)
    return SecondarySettings(
        base_dir=expand_path(text, environ),
        source=dotted(nested_at) if source.endswith("secondary") else source,
        max_used_bytes=limits.get("max_used_bytes"),
        min_free_bytes=limits.get("min_free_bytes"),
        cleanup_margin=_margin(r, sizes, l1_margin),
        cleanup_seconds_threshold=threshold,
    )


# ClearML's defaults (clearml/backend_api/session/session.py)
_DEFAULT_API_SERVER = "https://api.clear.ml"
_DEFAULT_FILES_SERVER = "https://files.clear.ml"
_LEGACY_FILES_SERVER = "https://files.community.clear.ml"
_HTTP_STORAGE_KEYS = frozenset({"legacy_fileservers", "hosts"})


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str]:
    """The first of the environment variables `names` that is set: (value, name)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return "", ""


def _http_origin(text: str) -> str | None:
    """`text` as "scheme://netloc[/path]" (lower-cased origin, no trailing "/"), or None if
    it is not an http(s) URL with a host."""
    low = lower_origin(text)
    scheme, sep, rest = low.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.partition("/")[0]:
        return None
    return low


def _files_server_from_api(api_server: str, web_server: str) -> str | None:
    """The files server ClearML derives from the API server (Session.get_files_server_host)."""
    if api_server == _DEFAULT_API_SERVER:
        return _DEFAULT_FILES_SERVER
    web = web_server
    if not web:
        scheme, _, rest = api_server.partition("://")
        netloc, _, path = rest.partition("/")
        if "://demoapi." in api_server:
            web = api_server.replace("://demoapi.", "://demoapp.", 1)
        elif "://api." in api_server:
            web = api_server.replace("://api.", "://app.", 1)
        elif netloc.endswith(":8008"):
            web = api_server.replace(":8008", ":8080", 1)
        else:
            return None
    scheme, sep, rest = web.partition("://")
    netloc, slash, path = rest.partition("/")
    name, colon, port = netloc.rpartition(":")
    if colon and port.isdigit():
        netloc = f"{name}:8081"
    elif netloc.startswith("demoapp."):
        netloc = "demofiles." + netloc[len("demoapp.") :]
    elif netloc.startswith("app."):
        netloc = "files." + netloc[len("app.") :]
    else:
        netloc += ":8081"
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _read_http(
    r: _Reader, top: dict[str, Any], sdk: dict[str, Any], environ: Mapping[str, str]
) -> HttpSettings:
    """The `api` section (and its CLEARML_* variables), `sdk.http` and `sdk.storage.http`."""
    api_at: Key = ("api",)
    api = r.section(top, (), "api")
    api_server, _ = _env(environ, "CLEARML_API_HOST", "TRAINS_API_HOST")
    api_server = (
        api_server
        or r.string(api, api_at, "api_server")
        or r.string(api, api_at, "host")
        or _DEFAULT_API_SERVER
    ).rstrip("/")
    credentials = r.section(api, api_at, "credentials")
    cred_at: Key = (*api_at, "credentials")
    access_key, _ = _env(environ, "CLEARML_API_ACCESS_KEY", "TRAINS_API_ACCESS_KEY")
    secret_key, _ = _env(environ, "CLEARML_API_SECRET_KEY", "TRAINS_API_SECRET_KEY")
    access_key = access_key or r.string(credentials, cred_at, "access_key", secret=True)
    secret_key = secret_key or r.string(credentials, cred_at, "secret_key", secret=True)

    auth: list[HttpHost] = []
    files, source = _env(environ, "CLEARML_FILES_HOST", "TRAINS_FILES_HOST")
    if not files:
        files, source = r.string(api, api_at, "files_server").strip(), "api.files_server"
    if not files:
        web, _ = _env(environ, "CLEARML_WEB_HOST", "TRAINS_WEB_HOST")
        web = (web or r.string(api, api_at, "web_server")).rstrip("/")
        # None: the SDK cannot derive one either (it fails only once it needs it)
        files = _files_server_from_api(api_server, web) or ""
        source = "ClearML default" if api_server == _DEFAULT_API_SERVER else "api.api_server"
    files_key: Key | None = (*api_at, "files_server") if source.startswith("api.") else None
    candidates: list[tuple[str, str, Key | None]] = [
        (files, source, files_key),
        (_LEGACY_FILES_SERVER, "ClearML built-in legacy file server", None),
    ]

    found = sdk.get("storage")
    storage: dict[str, Any] = found if isinstance(found, dict) else {}
    http_at: Key = (*_SDK, "storage", "http")
    storage_http = r.section(storage, http_at[:-1], "http", _HTTP_STORAGE_KEYS)
    for key in ("legacy_fileservers", "hosts"):
        value = storage_http.get(key)
        if value is not None and not isinstance(value, list):
            r.warn((*http_at, key), f"expected a list of URLs, got {_kind(value)}; ignored")
    legacy = storage_http.get("legacy_fileservers")
    for index, item in enumerate(legacy if isinstance(legacy, list) else []):
        here = (*http_at, "legacy_fileservers", index)
        candidates.append((str(item), dotted(here), here))
    metrics = r.section(sdk, _SDK, "metrics")
    plot = r.string(metrics, (*_SDK, "metrics"), "plot_upload_destination").strip()
    if _http_origin(plot):
        here = (*_SDK, "metrics", "plot_upload_destination")
        candidates.append((plot, dotted(here), here))
    for text, where, at in candidates:
        if not text:
            continue
        origin = _http_origin(text)
        if origin is None:
            message = f"{_shown(text)} is not an http(s) URL; ignored"
            if at is None:
                r.warnings.append(f"{where}: {message}")
            else:
                r.warn(at, message)
        elif all(host.url != origin for host in auth):
            auth.append(HttpHost(where, origin))

    plain: list[HttpHost] = []
    hosts = storage_http.get("hosts")
    for index, item in enumerate(hosts if isinstance(hosts, list) else []):
        origin = _http_origin(str(item)) if isinstance(item, str) else None
        if origin is None or "/" in origin.partition("://")[2]:
            r.warn(
                (*http_at, "hosts", index),
                f'expected "https://host" or "http://host:port", got {_shown(item)}; ignored',
            )
            continue
        plain.append(HttpHost(f"sdk.storage.http.hosts[{index}]", origin))

    http = r.section(sdk, _SDK, "http")
    timeout = r.section(http, (*_SDK, "http"), "timeout")
    timeout_at: Key = (*_SDK, "http", "timeout")
    download = r.section(http, (*_SDK, "http"), "download")
    connect_timeout, connect_set = _read_timeout(
        r, timeout, timeout_at, "connection", MOUNT_CONNECT_TIMEOUT
    )
    read_timeout, read_set = _read_timeout(r, timeout, timeout_at, "total", MOUNT_READ_TIMEOUT)
    return HttpSettings(
        api_server=api_server,
        access_key=access_key,
        secret_key=secret_key,
        auth_hosts=tuple(auth),
        plain_hosts=tuple(plain),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_retries=r.integer(download, (*_SDK, "http", "download"), "max_retries", 15),
        connect_timeout_set=connect_set,
        read_timeout_set=read_set,
    )


# ------------------------------------------------------------------------------ loading


def load(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config files (see `find_config_files`) into a `Config`.

    `environ` (default os.environ) serves `${VAR}` and every environment fallback; os.environ
    is never read or changed when it is given. Raises only ConfigError.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    return load_files(find_config_files(explicit, env), env)


def load_files(files: tuple[Path, ...], environ: Mapping[str, str] | None = None) -> Config:
    """Read exactly `files` (merge order, later wins) into a `Config`, as `load` does once it
    has found them (e.g. the files a running daemon reports it uses)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    warnings: list[str] = []
    tree = _Tree()
    for path in files:
        data, notes = parse_file(path, env)
        warnings.extend(notes)
        warnings.extend(tree.merge_file(data, path))
    r = _Reader(tree, warnings)
    sdk = tree.data.get("sdk")
    if sdk is not None and not isinstance(sdk, dict):
        r.warn(_SDK, f"expected an object {{ }}, got {_kind(sdk)}; ignored")
    sdk = sdk if isinstance(sdk, dict) else {}
    aws = r.section(sdk, _SDK, "aws", _AWS_KEYS)
    s3 = _read_s3(r, aws, env)
    azure = _read_azure(r, sdk, env)
    gcs = _read_gcs(r, sdk, env)
    direct_access, path_substitution, cache = _read_storage(r, sdk, env)
    http = _read_http(r, tree.data, sdk, env)
    return Config(
        files=files,
        s3=s3,
        azure=azure,
        gcs=gcs,
        direct_access=direct_access,
        path_substitution=path_substitution,
        cache=cache,
        warnings=tuple(warnings),
        http=http,
    )
