"""Sites: a storage server on 127.0.0.1, the SDK that seeds it, and the reference it measures.

One module per backend (``--backend`` name), each defining a ``Site`` subclass decorated with
``@register``. A site starts its server, seeds objects, times the SDK's own calls (the
reference column) and says how clearmount reaches the bucket; ``download`` is the reference
download, run in its own process by ``benchkit.download``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..common import import_all


class Site:
    """A storage server on 127.0.0.1, its seeded data and the SDK reference operations."""

    backend = ""
    server_name = ""
    sdk_package = ""  # listed in the report's versions (boto3 always is)
    ref_download_label = ""
    ref_get_label = ""
    ref_list_label = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: Any = None
        #: set by the runner for a proxied session: mounts reach the server through it
        self.proxy: Any = None

    @property
    def endpoint(self) -> str:
        """ "host:port" a mount is given: the proxy's while one is set, else the server's."""
        return str((self.proxy or self.server).endpoint)

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def upstream(self) -> tuple[str, int]:
        """(host, port) of the server, for a proxy in front of it."""
        host, port = str(self.server.endpoint).rsplit(":", 1)
        return host, int(port)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def server_version(self) -> str:
        raise NotImplementedError

    # seeding
    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    # references (in this process, client connections warm)
    def warm_up(self) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def get_first_byte(self, key: str) -> bytes:
        """One ranged GET of byte 0 of `key`."""
        raise NotImplementedError

    def list_count(self, prefix: str) -> int:
        raise NotImplementedError

    def download_params(self) -> dict[str, Any]:
        """What the download subprocess needs (see `download`)."""
        raise NotImplementedError

    @staticmethod
    def download(params: dict[str, Any], dest: str) -> Callable[[], None]:
        """In the download subprocess: a client from `params`, and the download to time."""
        raise NotImplementedError

    # clearmount
    def clearmount_conf(self) -> str:
        raise NotImplementedError

    def clearmount_env(self) -> dict[str, str]:
        return {}

    def clearmount_root(self, mnt: Path) -> Path:
        """The bucket/container root under a clearmount mount."""
        raise NotImplementedError


SITES: dict[str, type[Site]] = {}


def register(cls: type[Site]) -> type[Site]:
    SITES[cls.backend] = cls
    return cls


def load() -> dict[str, type[Site]]:
    """Every site, by backend name."""
    import_all(__name__, __path__)
    return SITES
