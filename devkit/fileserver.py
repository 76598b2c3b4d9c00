"""HTTP file servers: `NginxServer` (nginx from apt serving a folder with byte ranges, as
ClearML's file server is) and `ClearmlAuthStandIn` (the API server's ``auth.login``, which
cannot run here, in a thread of the calling process)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from . import HOST
from .processes import ServerError, ServerProcess, free_port, http_status


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise ServerError("nginx not found: scripts/test installs it (apt nginx)")
    return found


class NginxServer(ServerProcess):
    """nginx serving `root` (default WORKDIR/www) on 127.0.0.1: a plain HTTP file server with
    byte ranges, as ClearML's file server is to clearmount.

    Locations: ``/norange/`` answers without byte ranges (``max_ranges 0``: no
    ``Accept-Ranges``, a Range header is ignored). With `auth_endpoint` ("host:port"),
    ``/private/`` asks that server (``GET /check`` with the request's headers, nginx's
    ``auth_request``) and serves only what it answers 2xx for; without it ``/private/`` is
    refused; with `auth_everywhere` as well every other path is behind that check (a ClearML
    file server with authentication on, as scripts/demo runs it). Runs in the foreground
    (``daemon off``), its pid file, temp folders and logs in WORKDIR; as root its workers run
    as root so they can read files in private test folders.
    """

    name = "nginx"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        root: Path | None = None,
        auth_endpoint: str | None = None,
        auth_everywhere: bool = False,
    ) -> None:
        super().__init__(workdir)
        self._fixed_port = bool(port)
        self.port = port or free_port()
        self.root = Path(root) if root is not None else self.workdir / "www"
        self.auth_endpoint = auth_endpoint
        self.auth_everywhere = auth_everywhere and bool(auth_endpoint)
        self.conf_path = self.workdir / "nginx.conf"
        self.access_log = self.workdir / "access.log"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _config(self) -> str:
        temp = self.workdir / "temp"
        user = "user root root;" if os.geteuid() == 0 else ""
        if self.auth_endpoint:
            private = f"""
        location /private/ {{ auth_request /_auth; }}
        location = /_auth {{
            internal;
            proxy_pass http://{self.auth_endpoint}/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}"""
            if self.auth_everywhere:  # subrequests (the check itself) skip the access phase
                private = "\n        auth_request /_auth;" + private
        else:
            private = "\n        location /private/ { return 403; }"
        return f"""{user}
daemon off;
worker_processes 1;
pid {self.workdir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {HOST}:{self.port};
        root {self.root};
        location / {{ }}
        location /norange/ {{ max_ranges 0; }}{private}
    }}
}}
"""

    def command(self) -> list[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "temp").mkdir(exist_ok=True)
        self.conf_path.write_text(self._config())
        return [nginx_binary(), "-p", str(self.workdir), "-c", str(self.conf_path)]

    def ready(self) -> bool:
        return http_status(f"{self.url}/") is not None

    def put(self, path: str, data: bytes) -> str:
        """Write ROOT/path (atomically: a new file replaces the old one) and return its URL."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        temp.write_bytes(data)
        temp.rename(target)
        return f"{self.url}/{path.lstrip('/')}"


class ClearmlAuthStandIn:
    """A stand-in for the ClearML API server's ``auth.login`` (the real server cannot run
    here), on 127.0.0.1 in a thread of the calling process (a test, or scripts/demo).

    ``GET /auth.login`` with HTTP basic auth of `access_key`:`secret_key` answers as ClearML
    does, ``{"meta": {...}, "data": {"token": JWT}}``, the JWT stating ``exp`` = now +
    `lifetime`; other credentials get 401. ``GET /check`` is what nginx's ``auth_request``
    asks: 200 for ``Authorization: Bearer <a token handed out and not revoked>``, else 401.
    `logins` counts the logins, `tokens` lists every token handed out, `revoke` makes every
    token so far invalid.
    """

    def __init__(self, access_key: str, secret_key: str, lifetime: float = 3600.0) -> None:
        import http.server

        self.access_key = access_key
        self.secret_key = secret_key
        self.lifetime = lifetime
        self.logins = 0
        self.tokens: list[str] = []
        self._valid: set[str] = set()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                header = self.headers.get("Authorization", "")
                if self.path.split("?")[0] == "/auth.login":
                    self._reply(*stand_in._login(header))
                elif self.path == "/check":
                    token = header.removeprefix("Bearer ")
                    self._reply(200 if token in stand_in._valid else 401, b"{}")
                else:
                    self._reply(404, b"{}")

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _login(self, header: str) -> tuple[int, bytes]:
        import base64

        expected = f"{self.access_key}:{self.secret_key}".encode()
        if header != "Basic " + base64.b64encode(expected).decode():
            meta = {"result_code": 401, "result_msg": "Unauthorized (invalid credentials)"}
            return 401, json.dumps({"meta": meta, "data": {}}).encode()

        def part(value: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

        claims = {"exp": int(time.time() + self.lifetime), "nonce": secrets.token_hex(8)}
        token = f"{part({'alg': 'HS256'})}.{part(claims)}.{secrets.token_hex(16)}"
        self.logins += 1
        self.tokens.append(token)
        self._valid.add(token)
        body = {"meta": {"result_code": 200}, "data": {"token": token}}
        return 200, json.dumps(body).encode()

    def revoke(self) -> None:
        """Every token handed out so far is refused from now on."""
        self._valid.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
