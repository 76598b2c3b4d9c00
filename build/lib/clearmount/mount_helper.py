"""`mount.fuse.clearmount`: the helper mount(8) runs for `-t fuse.clearmount` and fstab lines.

Owns: translating mount(8)'s helper calling convention into a `clearmount` command line.
mount(8) runs `mount.fuse.clearmount SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`; SOURCE is the
clearml.conf to read (or `clearmount`/`none` for the usual search). Options only the helper
understands are taken out (`cache_dir=PATH`, `debug`); everything else goes to `-o`, where
fstab-only options (`_netdev`, `nofail`, `noauto`, `x-systemd.*`, ...) are accepted and
ignored. The daemon goes to the background and the helper returns once the mount answers,
which is what mount(8) and systemd's .mount units wait for. Example fstab line:

    /etc/clearmount/clearml.conf  /mnt/artifacts  fuse.clearmount  allow_other,_netdev,nofail  0 0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from clearmount.errors import UserError

USAGE = (
    "usage: mount.fuse.clearmount CONFIG|clearmount MOUNTPOINT [-sfnv] [-o OPT[,OPT...]]\n"
    "  (normally run by mount(8): mount -t fuse.clearmount CONFIG MOUNTPOINT -o OPTS)"
)
# SOURCE values that mean "no file named: search as the ClearML SDK does".
_DEFAULT_SOURCES = {"clearmount", "none", "default", ""}


def command_line(argv: Sequence[str]) -> list[str] | None:
    """The `clearmount` arguments for a helper call; None for a fake mount (`-f`).

    Raises UserError (exit 2) for a call it cannot understand.
    """
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "-o":
            if not args:
                raise UserError("-o needs a value\n" + USAGE, 2)
            options += args.pop(0).split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg.startswith("-N"):
            raise UserError(
                "mount.fuse.clearmount: -N (another mount namespace) is not supported", 2
            )
        elif arg.startswith("-t"):
            # the type is fuse.clearmount, or mount(8) would not have run us
            if arg == "-t" and args:
                args.pop(0)
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvi"):
            sloppy |= "s" in arg
            fake |= "f" in arg
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UserError(USAGE, 2)
    source, mountpoint = positional
    command = [mountpoint]
    if source not in _DEFAULT_SOURCES:
        command += ["--config", source]
    passed = []
    for option in filter(None, (o.strip() for o in options)):
        name, has_value, value = option.partition("=")
        if name == "cache_dir" and has_value:
            command += ["--cache-dir", value]
        elif name == "debug" and not has_value:
            command.append("--debug")
        elif sloppy and not _known(option):
            print(f"mount.fuse.clearmount: ignoring unknown option {option}", file=sys.stderr)
        else:
            passed.append(option)
    if passed:
        command += ["-o", ",".join(passed)]
    return None if fake else command


def _known(option: str) -> bool:
    from clearmount.options import parse_options

    try:
        parse_options([option])
    except UserError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    from clearmount import cli

    try:
        command = command_line(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_code)
    if command is None:
        sys.exit(0)
    cli.main(command)


if __name__ == "__main__":
    main()
