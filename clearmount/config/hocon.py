"""Finding the config files and reading HOCON: the only pyhocon importer.

Owns: which files are read (ClearML's rules: `--config`, CLEARML_CONFIG_FILE, ~/trains.conf
and ~/clearml.conf), `~` and `$VAR` expansion against a given environment, and parsing one
file into plain dicts, lists and scalars with `${VAR}` resolved against that environment
(pyhocon's `os` swapped under a lock, so os.environ is never read or changed). Every failure
is a one-line ConfigError naming the file; pyhocon's own messages are passed on only where
they cannot quote a value (a value may be a secret). What the values mean is `clearml.py`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import threading
import warnings as pywarnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyparsing
from pyhocon import ConfigFactory, ConfigTree
from pyhocon import config_parser as _hocon_parser
from pyhocon.config_tree import NoneValue
from pyhocon.exceptions import ConfigSubstitutionException

from clearmount.errors import ConfigError

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


def expand_path(text: str, environ: Mapping[str, str]) -> Path:
    """`text` with `~` and `$VAR` expanded against `environ`, made absolute."""
    return _absolute(Path(_expand_vars(str(_expand_user(text, environ)), environ)))


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


def parse_file(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
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
