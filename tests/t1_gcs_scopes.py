"""GCS tokens: read-only scope for reads, read-write only for the writes of -o writable."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clearmount.backends import gcs
from clearmount.config.schema import GcsCredentials, GcsSettings
from clearmount.urls import StorageURL

READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"


def service_account_json() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "k",
            "private_key": pem,
            "client_email": "reader@p.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def test_reads_ask_for_read_only_tokens_and_only_writes_for_read_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(gcs.EMULATOR_ENV, raising=False)
    entry = GcsCredentials(source="sdk.google.storage", credentials_json=service_account_json())
    store = gcs.GcsStore(
        StorageURL("gs", "", "scoped-bucket", "key"), GcsSettings(defaults=entry, credentials=())
    )
    # building a client with a service-account key contacts nothing
    reader, _ = store._serving("key")
    writer, _ = store._serving("key", writing=True)
    assert list(reader.client._credentials.scopes) == [READ_ONLY]
    assert list(writer.client._credentials.scopes) == [READ_WRITE]
    assert store._serving("other")[0] is reader  # one client per entry and mode
