"""clearml.conf, read the way the ClearML SDK reads it, turned into frozen typed settings.

Nothing downstream sees HOCON: everything leaves this package as the dataclasses of
`schema.py`. One module per reason to change; each imports only those listed after it:
- `clearml.py`: ClearML's rules: merging, the tree -> the settings, warnings naming file
  and key, the environment fallbacks, `load` (and the deliberate differences from the SDK);
- `describe.py`: `describe` and `describe_deadlines`, the masked view of `clearmount config`;
- `hocon.py`: finding the files, HOCON with `${VAR}` from a given environment (the only
  pyhocon importer);
- `schema.py`: the frozen dataclasses, the deadline constants, `parse_size`; no I/O.

Other modules import from here (`from clearmount.config import Config`); the names below are
the package's interface. MIN_OPERATION_SECONDS and MIN_STALL_WINDOW are not among them:
`Deadlines` reads them from `schema`, so that is where a test patches them.
"""

from clearmount.config.clearml import load, load_files
from clearmount.config.describe import describe, describe_deadlines
from clearmount.config.hocon import default_config_paths, find_config_files
from clearmount.config.schema import (
    MIB,
    MOUNT_CONNECT_TIMEOUT,
    MOUNT_READ_TIMEOUT,
    STALL_BYTES,
    AzureContainer,
    AzureSettings,
    Boto3Settings,
    CacheSettings,
    Config,
    Deadlines,
    DirectAccessRule,
    GcsCredentials,
    GcsSettings,
    HttpHost,
    HttpSettings,
    PathSubstitution,
    S3Credentials,
    S3Settings,
    SecondarySettings,
    parse_size,
)
from clearmount.errors import ConfigError

__all__ = [
    "MIB",
    "MOUNT_CONNECT_TIMEOUT",
    "MOUNT_READ_TIMEOUT",
    "STALL_BYTES",
    "AzureContainer",
    "AzureSettings",
    "Boto3Settings",
    "CacheSettings",
    "Config",
    "ConfigError",
    "Deadlines",
    "DirectAccessRule",
    "GcsCredentials",
    "GcsSettings",
    "HttpHost",
    "HttpSettings",
    "PathSubstitution",
    "S3Credentials",
    "S3Settings",
    "SecondarySettings",
    "default_config_paths",
    "describe",
    "describe_deadlines",
    "find_config_files",
    "load",
    "load_files",
    "parse_size",
]
