"""The control protocol's error border, without a daemon: what a handler raises becomes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from clearmount import control
from clearmount.errors import ConfigError, NotFound


async def test_a_handler_error_becomes_its_one_line_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(control.RUNTIME_DIR_ENV, str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    server = control.ControlServer(*control.bind(tmp_path / "mnt"))
    failures: dict[str, Exception] = {
        "missing": NotFound("no such object", "s3://bucket/k", "sdk.aws.s3"),
        "bad": ConfigError("bad value"),
        "bug": KeyError("x"),
    }
    for op, exc in failures.items():

        async def handler(request: dict[str, Any], exc: Exception = exc) -> dict[str, Any]:
            raise exc

        server.register(op, handler)
    try:
        replies = {op: await server.dispatch(json.dumps({"op": op}).encode()) for op in failures}
    finally:
        server.close()
    # clearmount's errors, whatever their kind, are their own one line; anything else a bug
    assert replies["missing"] == {
        "ok": False,
        "error": "no such object (s3://bucket/k, credentials sdk.aws.s3)",
    }
    assert replies["bad"] == {"ok": False, "error": "bad value"}
    assert replies["bug"] == {"ok": False, "error": "internal error: KeyError"}
    (logged,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged.exc_info is not None and logged.exc_info[0] is KeyError
