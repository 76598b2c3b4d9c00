"""The one error vocabulary of clearmount, and the one table that turns it into errno.

Owns: every exception type that crosses a module border, and `errno_for`. Errors change kind
at exactly two borders, and are rendered as text at a third:

- SDK → clearmount, in each adapter (`backends/s3.py`, `azure.py`, `gcs.py`, `http.py`):
  every SDK call runs inside `backends.base.sdk_border` with the adapter's `translate` table,
  so only `StoreError`s leave an adapter. An exception no table names is a bug: logged there
  once, at ERROR with its traceback, and raised as `Unexpected`.
- clearmount → errno, in `fuse_ops._errors`: a `ClearmountError` or `OSError` becomes
  `FUSEError(errno_for(exc))`, logged once; anything else is logged with its traceback and
  becomes EIO. Only `FUSEError` leaves a pyfuse3 handler.
- clearmount → text: the CLI prints a `UserError` as one line and exits with its
  `exit_code`; the control socket (`control.ControlServer.dispatch`) sends a
  `ClearmountError` a handler raised as its one-line error reply.

Nothing else maps errors: other modules raise these types (the cache raises `CacheError` for
its own files) or let them pass.
"""

from __future__ import annotations

import errno


class ClearmountError(Exception):
    """Base of everything clearmount raises on purpose."""

    errno: int = errno.EIO


class UserError(ClearmountError):
    """A problem the user can fix; the CLI prints it as one line and exits with `exit_code`."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """clearml.conf cannot be used: unparsable, unset ${VAR}, unusable cache dir, bad option."""

    exit_code = 3


class MountPointError(UserError):
    """The mount point is missing, not a directory, not empty or already mounted."""

    exit_code = 4


class StoreError(ClearmountError):
    """A backend call failed. `url` names the object, `entry` the config entry used."""

    def __init__(self, message: str, url: str = "", entry: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.entry = entry

    def __str__(self) -> str:
        text = super().__str__()
        where = f" ({self.url}" + (f", credentials {self.entry}" if self.entry else "") + ")"
        return text + where if self.url else text


class NotFound(StoreError):
    errno = errno.ENOENT


class AccessDenied(StoreError):
    errno = errno.EACCES


class Unavailable(StoreError):
    """The server could not be reached or kept failing after retries."""

    errno = errno.EIO


class ProtocolError(StoreError):
    """The server answered, but not what was asked (e.g. other bytes than the range): asking
    again would get the same answer, so it is not retried."""

    errno = errno.EIO


class Stale(StoreError):
    """The object changed under a reader (version precondition failed)."""

    errno = errno.ESTALE


class Unexpected(StoreError):
    """A backend call raised what its adapter's table does not name: a bug in clearmount or
    the SDK. Logged with its traceback where it was raised; not retried (asking again would
    fail the same way)."""

    errno = errno.EIO


class QuotaExceeded(StoreError):
    """The server refused to store more (a quota, or an object too large for it)."""

    errno = errno.EDQUOT


class WriteRefused(ClearmountError):
    """A write the mount's options do not allow (overwrite, delete): the object is untouched."""

    errno = errno.EPERM


class WriteUnsupported(ClearmountError):
    """A write the mount cannot turn into an upload (a random write, an append, a directory
    rename): README "Writing" lists what works."""

    errno = errno.ENOTSUP


class BadWrite(ClearmountError):
    """A write at another offset than the end of what was written so far."""

    errno = errno.EINVAL


class CacheError(ClearmountError):
    """The local cache could not be written or read."""

    errno = errno.EIO

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.errno = code


def errno_for(exc: BaseException) -> int:
    """The errno a FUSE caller sees for `exc`."""
    if isinstance(exc, ClearmountError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
