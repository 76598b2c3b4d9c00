"""clearml.conf (HOCON) texts for the servers: `s3_conf`, `s3_section`, `sdk_block`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .processes import endpoint_of
from .s3 import Identity, S3Server


def hocon(value: object) -> str:
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}: {hocon(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hocon(v) for v in value) + "]"
    return json.dumps(value)


def s3_section(
    target: str | Any,
    *entries: Identity | Mapping[str, object],
    s3_extra: str = "",
) -> str:
    """The ``aws { s3 { ... } }`` block of `s3_conf` (to combine with other sections)."""
    endpoint = endpoint_of(target)
    if not entries:
        if not isinstance(target, S3Server):
            raise ValueError("s3_conf needs at least one entry unless given an S3Server")
        entries = (target.admin,)
    lines = ["aws {", "  s3 {"]
    lines += [f"    {line}" for line in s3_extra.strip().splitlines()]
    lines.append("    credentials: [")
    for entry in entries:
        base: dict[str, object] = {"host": endpoint}
        if isinstance(entry, Identity):
            base.update(key=entry.key, secret=entry.secret)
        base.update(secure=False, multipart=True)
        if not isinstance(entry, Identity):
            base.update(entry)
        lines.append(f"      {hocon(base)}")
    lines += ["    ]", "  }", "}"]
    return "\n".join(lines)


def s3_conf(
    target: str | Any,
    *entries: Identity | Mapping[str, object],
    s3_extra: str = "",
    sdk_extra: str = "",
) -> str:
    """clearml.conf text with one ``sdk.aws.s3.credentials`` entry per `entries` item.

    `target` is the endpoint ("127.0.0.1:PORT", a `Proxy`, an `S3Server`). An `Identity`
    becomes ``{host: ENDPOINT, key, secret, secure: false, multipart: true}``; a mapping is
    laid over those defaults (a value None drops the key, e.g. ``{"host": None, "bucket":
    "b", ...}`` for a bucket-only entry). With no entries an `S3Server` target's admin is
    used. `s3_extra` is HOCON text placed inside ``s3 { }`` (e.g. ``key: "..."``),
    `sdk_extra` inside ``sdk { }`` (e.g. ``storage { cache { ... } }``).
    """
    section = s3_section(target, *entries, s3_extra=s3_extra)
    return sdk_block([section, sdk_extra])


def sdk_block(sections: Iterable[str]) -> str:
    """``sdk { ... }`` around HOCON sections (empty ones skipped)."""
    body = [f"  {line}" for text in sections for line in text.strip().splitlines()]
    return "\n".join(["sdk {", *body, "}", ""])
