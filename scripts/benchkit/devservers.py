"""The server launchers and mount helpers the tests use; the only place that imports them.

They live in ``tests/servers.py`` for now, reached through ``sys.path``; when they move into a
package of their own, only this import changes.
"""

import sys

from .common import REPO

sys.path.insert(0, str(REPO / "tests"))
import servers

__all__ = ["servers"]
