"""clearml.conf, read the way the ClearML SDK reads it, turned into frozen typed settings.

Owns: finding the config files, HOCON parsing (the only pyhocon importer), `${VAR}` resolution
against a given environment, merging, validation with one-line warnings that name file and
key, the environment fallbacks, each backend's `Deadlines` (clearml.conf's values, else the
mount's own, and which is in force), and `describe` (the masked view behind `clearmount config`).
Nothing downstream sees HOCON: everything leaves this module as the dataclasses below.
The ClearML behaviour reproduced here is in shared/reference/clearml-storage.md, sections 1-2.

Deliberate differences from the ClearML SDK, each reported as a warning:
- the bare form (`aws {}`, `azure.storage {}`, `google.storage {}`, `storage {}` at the top
  level) is read as if it were inside `sdk {}`; ClearML ignores it;
- an unknown key is skipped (ClearML fails with TypeError on an unknown credentials key);
- a quoted `secure: "false"` (any boolean given as a string) means false; ClearML treats every
  non-empty string as true;
- a credentials entry that ClearML drops silently is dropped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pwd
import re
import threading
import warnings as pywarnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyparsing
from pyhocon import ConfigFactory, ConfigTree
from pyhocon import config_parser as _hocon_parser
from pyhocon.config_tree import NoneValue
from pyhocon.exceptions import ConfigSubstitutionException

from clearmount.errors import ConfigError

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
        low = _lower_origin(url)
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


def _lower_origin(url: str) -> str:
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


# ------------------------------------------------------------------------------ finding files


def find_config_files(explicit: Path | None, environ: Mapping[str, str]) -> tuple[Path, ...]:
    """The files to read, in merge order (ClearML's rules, reference section 1.1).

    `--config FILE` alone, else CLEARML_CONFIG_FILE (or TRAINS_CONFIG_FILE) alone, else
    ~/trains.conf then ~/clearml.conf, each only if it exists. A named file that is missing is
    a ConfigError: a daemon silently running without its credentials helps nobody.
    """
    if explicit is not None:
        path = _absolute(_expand_user(str(explicit), environ))
        if not _is_file(path):
            raise ConfigError(f"{explicit}: no such config file")
        return (path,)
    for name in ("CLEARML_CONFIG_FILE", "TRAINS_CONFIG_FILE"):
        value = environ.get(name, "")
        if value:
            path = _absolute(_expand_user(value, environ))
            if not _is_file(path):
                raise ConfigError(f"{name}={value}: no such config file")
            return (path,)
    return tuple(path for path in default_config_paths(environ) if _is_file(path))


def default_config_paths(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """Where the configuration is looked for when no file is named (merge order)."""
    home = _home(environ)
    return (home / "trains.conf", home / "clearml.conf")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read: {_os_reason(exc)}") from None


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME", "")
    if home:
        return Path(home)
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return Path("/")


def _expand_user(text: str, environ: Mapping[str, str]) -> Path:
    # os.path.expanduser reads os.environ; the caller's environment must win.
    if text == "~" or text.startswith("~/"):
        return _home(environ) / text[2:]
    return Path(os.path.expanduser(text))


_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def _expand_vars(text: str, environ: Mapping[str, str]) -> str:
    """os.path.expandvars against `environ`: unknown variables are left as they are."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        return environ.get(name, match.group(0))

    return _VARIABLE.sub(value, text)


def _absolute(path: Path) -> Path:
    try:
        return path.absolute()
    except OSError:  # the working directory is gone
        return path


# ------------------------------------------------------------------------------ parsing

# pyhocon resolves ${VAR} from os.environ and offers no way to pass another mapping. Swapping
# the `os` it sees for a stand-in whose `environ` is the caller's keeps os.environ untouched;
# the lock makes the swap invisible to a concurrent load.
_parser_lock = threading.Lock()


class _OsWithEnviron:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _hocon_environment(environ: Mapping[str, str]) -> Iterator[list[str]]:
    """pyhocon reading `environ`; its log lines (a missing include) are collected, not printed."""
    logger = logging.getLogger(_hocon_parser.__name__)
    collector = _Collector()
    with _parser_lock, pywarnings.catch_warnings():
        # pyhocon calls the deprecated Logger.warn
        pywarnings.simplefilter("ignore", DeprecationWarning)
        saved_os, saved_propagate = _hocon_parser.os, logger.propagate
        _hocon_parser.os = _OsWithEnviron(environ)
        logger.addHandler(collector)
        logger.propagate = False
        try:
            yield collector.messages
        finally:
            _hocon_parser.os = saved_os
            logger.removeHandler(collector)
            logger.propagate = saved_propagate


_UNSET_VARIABLE = re.compile(r"Cannot resolve variable \$\{(?P<name>[^}]*)\} \(line: (?P<line>\d+)")


def _parse_file(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """One file as plain dicts/lists/scalars, `${VAR}` resolved; plus pyhocon's complaints."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {_os_reason(exc)}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot parse: not UTF-8 text (byte {exc.start})") from None
    try:
        with _hocon_environment(environ) as notes:
            tree = ConfigFactory.parse_string(text, basedir=str(path.parent), resolve=True)
    except ConfigSubstitutionException as exc:
        unset = _UNSET_VARIABLE.search(str(exc))
        if unset:
            raise ConfigError(
                f"{path}: line {unset['line']}: ${{{unset['name']}}} is not set "
                "(neither a key of the file nor an environment variable)"
            ) from None
        raise ConfigError(f"{path}: cannot resolve: {_first_line(str(exc))}") from None
    except pyparsing.ParseBaseException as exc:
        # exc.msg, unlike str(exc), does not quote the text found there (it may be a secret);
        # a long one is pyparsing's dump of the grammar, useless to a user
        reason = exc.msg if len(exc.msg) <= 60 else "syntax error"
        raise ConfigError(
            f"{path}: cannot parse: line {exc.lineno}, column {exc.col}: {_first_line(reason)}"
        ) from None
    except RecursionError:
        raise ConfigError(
            f"{path}: cannot parse: nested too deeply, or a substitution refers to itself"
        ) from None
    except Exception as exc:  # pyhocon raises many types for malformed input
        raise ConfigError(f"{path}: cannot parse: {_safe_reason(exc)}") from None
    if not isinstance(tree, ConfigTree):
        raise ConfigError(f"{path}: cannot parse: the file is a list, expected an object")
    plain = _plain(tree)
    assert isinstance(plain, dict)
    return plain, [f"{path}: {_first_line(note)}" for note in notes]


_LINE = re.compile(r"\(line: ?(\d+)")


def _safe_reason(exc: Exception) -> str:
    """A one-line reason for a pyhocon failure that never repeats the values it involves.

    Several pyhocon messages quote the offending values (or the whole input), and a value
    may be a secret; only messages known to carry names alone are passed on.
    """
    text = str(exc)
    line = _LINE.search(text)
    where = f"line {line.group(1)}: " if line else ""
    if isinstance(exc, OSError):
        return f"include: {_os_reason(exc)}" + (f": {exc.filename}" if exc.filename else "")
    if "Cannot concatenate" in text or "must be of type" in text:
        return f"{where}values of different types (object, list, string) joined together"
    if "Unable to make such include" in text:
        return "an include mixes a list and an object"
    if "No file or URL specified" in text:
        return "include without a file name"
    return f"{where}malformed input ({type(exc).__name__})"


class _Unresolved:
    """A value pyhocon left unresolved (never expected; kept as junk, not crashed on)."""


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {_unquote_key(str(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, NoneValue) or value is NoneValue:
        return None
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)
    return _Unresolved()


def _unquote_key(key: str) -> str:
    # pyhocon keeps the quotes of a quoted key ("a.b")
    if len(key) >= 2 and key[0] == key[-1] == '"':
        return key[1:-1]
    return key


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
    base_dir = _absolute(Path(_expand_vars(str(_expand_user(text, environ)), environ)))

    strategy = r.section(cache, at, "disk_space_file_size_strategy")
    limits: dict[str, int | None] = {}
    # the open-source 2.x spelling wins over the Enterprise docs' sdk.storage.cache.size
    for size_at, owner in (
        ((*at, "size"), cache),
        ((*at, "disk_space_file_size_strategy", "size"), strategy),
    ):
        size = r.section(owner, size_at[:-1], "size", _SIZE_KEYS)
        for name in ("max_used_bytes", "min_free_bytes"):
            if name in size:
                limits[name] = r.byte_limit(size, size_at, name)
    return CacheSettings(
        base_dir=base_dir,
        max_used_bytes=limits.get("max_used_bytes"),
        min_free_bytes=limits.get("min_free_bytes"),
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
    low = _lower_origin(text)
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


# ------------------------------------------------------------------------------ public


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
        data, notes = _parse_file(path, env)
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


# ------------------------------------------------------------------------------ describe


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
    if size is None:
        return "no limit"
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit} ({size} bytes)"
    return f"{size} bytes"


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
    return "\n".join(lines)
