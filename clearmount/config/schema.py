"""The settings every other module receives: frozen typed dataclasses, no I/O.

Owns: the shape of a parsed clearml.conf (`Config` and one section class per storage), each
backend's `Deadlines` (clearml.conf's values, else the mount's own, and which is in force),
the mount's deadline constants, and `parse_size` (what "50GB" means, for clearml.conf and the
command line alike). Imports nothing else of `clearmount.config`.

`Deadlines` reads MIN_OPERATION_SECONDS and MIN_STALL_WINDOW from this module each time, so
this is where a test patches them (`clearmount.config` does not re-export them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

MIB = 2**20


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class S3Credentials:
    """One `sdk.aws.s3.credentials[]` entry, or the top-level defaults.

    Entries never inherit the top-level region/secure/verify/profile (as in ClearML).
    """

    #: where it came from, for messages: "sdk.aws.s3.credentials[1]", "sdk.aws.s3", "environment"
    source: str
    #: quotes and trailing "/" stripped
    bucket: str = ""
    #: "host[:port]", no scheme
    host: str = ""
    key: str = ""
    secret: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    region: str = ""
    profile: str = ""
    multipart: bool = True
    secure: bool = True
    #: None/True: verify with the default CAs; False: do not verify; str: a CA bundle path
    verify: bool | str | None = None
    use_credentials_chain: bool = False

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint for a host entry (`http(s)://host`), None for AWS itself."""
        if not self.host:
            return None
        return ("https://" if self.secure else "http://") + self.host


#: Request deadlines made for a mount, in force where clearml.conf sets none (ClearML's own
#: are 60 s each): seconds to open a connection, and to wait for the first byte of an answer
#: and between bytes.
MOUNT_CONNECT_TIMEOUT = 10.0
MOUNT_READ_TIMEOUT = 30.0
#: A lookup, or a download that receives nothing, gives up after this long at least.
MIN_OPERATION_SECONDS = 45.0
#: A download that receives less than STALL_BYTES in this long at least is stalled.
MIN_STALL_WINDOW = 30.0
STALL_BYTES = MIB


@dataclass(frozen=True)
class Deadlines:
    """How long one backend's requests may take, and where each value came from. Every
    backend takes one (README "Guarantees"); `clearmount.transfer` enforces the last two.

    - `connect`, `read`: the SDK's own per-request deadlines (the read deadline bounds the
      wait for the first byte and every pause between bytes);
    - `operation`: a lookup (HEAD, one listing page) gets EIO after this long, retries
      included, and a download that receives nothing for this long fails;
    - `stall_window`: a download that receives less than 1 MiB in this long is stalled and
      resumed from its last byte (a server trickling bytes never trips `read`).
    """

    connect: float = MOUNT_CONNECT_TIMEOUT
    read: float = MOUNT_READ_TIMEOUT
    #: the clearml.conf keys that set them ("" where clearml.conf has no such key)
    connect_key: str = ""
    read_key: str = ""
    #: whether clearml.conf set them; else the mount defaults are in force
    connect_set: bool = False
    read_set: bool = False

    @property
    def operation(self) -> float:
        return max(MIN_OPERATION_SECONDS, self.connect + self.read)

    @property
    def stall_window(self) -> float:
        return max(MIN_STALL_WINDOW, self.connect + self.read)


@dataclass(frozen=True)
class Boto3Settings:
    """`sdk.aws.boto3`, with ClearML's defaults (the mount's own for the two timeouts)."""

    #: ClearML never uses fewer than 512, and neither do we
    pool_connections: int = 512
    max_multipart_concurrency: int = 16
    multipart_threshold: int = 8 * MIB
    multipart_chunksize: int = 8 * MIB
    connect_timeout: float = MOUNT_CONNECT_TIMEOUT
    read_timeout: float = MOUNT_READ_TIMEOUT
    signature_version: str | None = None
    #: `sdk.aws.boto3.s3.addressing_style`: "path", "virtual", "auto" or None (botocore default)
    addressing_style: str | None = None
    #: whether clearml.conf set connect_timeout / read_timeout (else the mount defaults)
    connect_timeout_set: bool = False
    read_timeout_set: bool = False

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines(
            self.connect_timeout,
            self.read_timeout,
            "sdk.aws.boto3.connect_timeout",
            "sdk.aws.boto3.read_timeout",
            self.connect_timeout_set,
            self.read_timeout_set,
        )


@dataclass(frozen=True)
class S3Settings:
    #: top-level key/secret/token/region/profile/use_credentials_chain/secure, with the AWS_*
    #: environment fallbacks; used for URLs that match no entry
    defaults: S3Credentials
    #: usable entries in config order (dropped ones produced a warning)
    credentials: tuple[S3Credentials, ...]
    boto3: Boto3Settings


@dataclass(frozen=True)
class AzureContainer:
    """One `sdk.azure.storage.containers[]` entry (or the AZURE_STORAGE_* environment pair).

    `endpoint` is a clearmount extension, not a ClearML key: an optional blob service URL such
    as "http://127.0.0.1:10000/devstoreaccount1" (Azurite) or a sovereign-cloud endpoint,
    used instead of `https://<account>.blob.core.windows.net`. ClearML fails on it (TypeError).
    """

    source: str
    account_name: str
    account_key: str = field(repr=False)
    #: "" matches every container of the account
    container_name: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class AzureSettings:
    #: config entries in order, then the environment entry (source "environment") if set
    containers: tuple[AzureContainer, ...]
    max_connections: int = 0

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines()  # clearml.conf has no timeout keys for Azure


@dataclass(frozen=True)
class GcsCredentials:
    source: str
    bucket: str = ""
    #: without leading or trailing "/"
    subdir: str = ""
    project: str | None = None
    #: a service-account file path or the raw JSON itself; None: Google default credentials
    credentials_json: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class GcsSettings:
    #: top-level project/credentials_json (GOOGLE_APPLICATION_CREDENTIALS as a fallback)
    defaults: GcsCredentials
    credentials: tuple[GcsCredentials, ...]

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines()  # clearml.conf has no timeout keys for Google Cloud Storage


@dataclass(frozen=True)
class DirectAccessRule:
    source: str
    #: a glob on the URL, with ClearML's matcher semantics (reference section 6)
    url: str


@dataclass(frozen=True)
class PathSubstitution:
    source: str
    registered_prefix: str
    local_prefix: str
    replace_windows_sep: bool = False
    replace_linux_sep: bool = False


@dataclass(frozen=True)
class CacheSettings:
    #: CLEARML_CACHE_DIR (or TRAINS_CACHE_DIR), else sdk.storage.cache.default_base_dir, else
    #: ~/.clearml/cache; user and variables expanded, absolute. Not checked here: the daemon does.
    base_dir: Path
    #: ...disk_space_file_size_strategy.size.max_used_bytes (also read from the Enterprise
    #: docs' spelling sdk.storage.cache.size.*); a negative value means no limit (None)
    max_used_bytes: int | None = None
    min_free_bytes: int | None = None
    #: ClearML 2.1's `_resolve_disk_strategy_enabled`: ...disk_space_file_size_strategy.enabled
    #: when set, else on when sdk.storage.cache.size or sdk.storage.cache.secondary is a
    #: non-empty section. On: files live at `<base_dir>/storage/<scheme>/<host>/<path>`
    #: (`cache.layout.DiskSpaceLayout`); off: `<base_dir>/storage_manager/global/<md5>.<name>`.
    disk_strategy: bool = False
    #: the key that decided `disk_strategy` ("" for the default: off)
    disk_strategy_source: str = ""
    #: ...size.cleanup_margin_percent (a fraction): eviction of the 2.x layout goes on until
    #: max_used_bytes * (1 - margin) and min_free_bytes * (1 + margin) both hold
    cleanup_margin: float = 0.05
    #: sdk.storage.cache.cleanup_seconds_threshold: eviction of the 2.x layout stops at a file
    #: used this recently
    cleanup_seconds_threshold: float = 20.0
    #: the shared level-2 cache (only with `disk_strategy`, as in the SDK), or None
    secondary: SecondarySettings | None = None

    @property
    def layout_name(self) -> str:
        """ "storage" (ClearML 2.x disk-space layout) or "storage_manager" (CacheManager)."""
        return "storage" if self.disk_strategy else "storage_manager"


@dataclass(frozen=True)
class SecondarySettings:
    """ClearML 2.1's secondary (L2) cache on a shared filesystem."""

    #: CLEARML_SECONDARY_CACHE_DIR, else ...strategy.secondary.default_base_dir,
    #: else sdk.storage.cache.secondary.default_base_dir; files live under `<base_dir>/storage`
    base_dir: Path
    #: the key (or environment variable) that named `base_dir`
    source: str
    #: secondary.size.* (else the L1's own size values, as the SDK falls back to them)
    max_used_bytes: int | None = None
    min_free_bytes: int | None = None
    cleanup_margin: float = 0.05
    #: secondary.cleanup_seconds_threshold: the L2's evictor never removes a file published or
    #: used this recently (the SDK falls back to the L1's 20 s; clearmount to 60 s, since the
    #: clocks of the nodes and of the file server differ)
    cleanup_seconds_threshold: float = 60.0


@dataclass(frozen=True)
class HttpHost:
    """One http(s) place clearmount may contact: "scheme://netloc[/path]", as configured."""

    source: str  # the key (or environment variable) that names it
    url: str  # scheme and netloc lower-cased, no trailing "/"

    @property
    def listed(self) -> bool:
        """Shown under `http/` or `https/`: named by the config or the environment, not one
        of ClearML's built-in defaults (those are still reachable by name)."""
        return not self.source.startswith("ClearML")

    @property
    def origin(self) -> str:
        """ "scheme://netloc": what gates a connection (a path in `url` only narrows auth)."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.partition('/')[0]}"


@dataclass(frozen=True)
class HttpSettings:
    """The ClearML file server and other http(s) hosts (section `api`, `sdk.http`,
    `sdk.storage.http`): who gets the files-server Bearer token and how long requests wait."""

    #: api.api_server (or api.host) / CLEARML_API_HOST; ClearML's default https://api.clear.ml
    api_server: str = "https://api.clear.ml"
    #: api.credentials.access_key / CLEARML_API_ACCESS_KEY (a secret, as is secret_key)
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    #: the hosts that get `Authorization: Bearer <token>` (ClearML's files-server hosts):
    #: api.files_server / CLEARML_FILES_HOST (or derived from the API server as the SDK does),
    #: ClearML's built-in legacy server, sdk.storage.http.legacy_fileservers and an http(s)
    #: sdk.metrics.plot_upload_destination
    auth_hosts: tuple[HttpHost, ...] = ()
    #: sdk.storage.http.hosts (clearmount's own key): hosts read with no credentials
    plain_hosts: tuple[HttpHost, ...] = ()
    #: sdk.http.timeout.connection / .total (seconds; the mount's own defaults when
    #: clearml.conf sets neither) and sdk.http.download.max_retries
    connect_timeout: float = MOUNT_CONNECT_TIMEOUT
    read_timeout: float = MOUNT_READ_TIMEOUT
    max_retries: int = 15
    #: whether clearml.conf set the two timeouts
    connect_timeout_set: bool = False
    read_timeout_set: bool = False

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines(
            self.connect_timeout,
            self.read_timeout,
            "sdk.http.timeout.connection",
            "sdk.http.timeout.total",
            self.connect_timeout_set,
            self.read_timeout_set,
        )

    def auth_for(self, url: str) -> HttpHost | None:
        """The files-server entry whose URL starts `url` (whole segments), if any."""
        low = lower_origin(url)
        for host in self.auth_hosts:
            if low == host.url or low.startswith(host.url + "/"):
                return host
        return None

    def host_entry(self, scheme: str, netloc: str) -> HttpHost | None:
        """The entry naming `scheme://netloc` (auth hosts first), if the config names it."""
        origin = f"{scheme}://{netloc}".lower()
        for host in (*self.auth_hosts, *self.plain_hosts):
            if host.origin == origin:
                return host
        return None


def lower_origin(url: str) -> str:
    """`url` with its scheme and netloc lower-cased and no trailing "/"."""
    scheme, sep, rest = url.strip().partition("://")
    netloc, slash, path = rest.partition("/")
    return (f"{scheme.lower()}{sep}{netloc.lower()}{slash}{path}").rstrip("/")


@dataclass(frozen=True)
class Config:
    #: the files actually read, in merge order (later wins)
    files: tuple[Path, ...]
    s3: S3Settings
    azure: AzureSettings
    gcs: GcsSettings
    direct_access: tuple[DirectAccessRule, ...]
    path_substitution: tuple[PathSubstitution, ...]
    cache: CacheSettings
    #: one line each, naming file and key
    warnings: tuple[str, ...]
    http: HttpSettings = field(default_factory=HttpSettings)


# ------------------------------------------------------------------------------ sizes


_SIZE_TEXT = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([a-z]*)\s*")
_UNITS = {
    "": 1,
    "b": 1,
    **{prefix: 1000**power for power, prefix in enumerate("kmgtpe", start=1)},
    **{prefix + "b": 1000**power for power, prefix in enumerate("kmgtpe", start=1)},
    **{prefix + "i": 1024**power for power, prefix in enumerate("kmgtpe", start=1)},
    **{prefix + "ib": 1024**power for power, prefix in enumerate("kmgtpe", start=1)},
}


def parse_size(text: str | int) -> int:
    """A byte count from "50GB" (10**9), "10GiB" (2**30), "1.5G", "123" or an int.

    Units are case-insensitive; K/M/G/T/P/E are decimal, the "i" forms binary. ValueError
    on anything else.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r}")
    match = _SIZE_TEXT.fullmatch(text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (expected e.g. 123, 500MB, 50GB, 10GiB)")
    try:
        return int(Decimal(match.group(1)) * _UNITS[match.group(2)])
    except InvalidOperation:
        raise ValueError(f"not a size: {text!r}") from None
