"""GCS tokens: read-only scope for reads, read-write only for the writes of -o writable."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import google.oauth2.credentials
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import service_account

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


def test_credentials_json_loads_a_service_account_or_a_user_with_their_own_loaders(
    tmp_path: Path,
) -> None:
    # google-auth deprecates its generic loaders, which also accept configurations that run
    # commands; each kind ClearML's users put there has a loader of its own
    account = tmp_path / "account.json"
    account.write_text(service_account_json())
    user = json.dumps(
        {
            "type": "authorized_user",
            "client_id": "c",
            "client_secret": "user-secret-material",
            "refresh_token": "r",
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated loader fails the test
        for value in (service_account_json(), str(account)):
            credentials, project = gcs._load_credentials(
                GcsCredentials(source="sdk.google.storage", credentials_json=value), [READ_ONLY]
            )
            assert isinstance(credentials, service_account.Credentials), value
            assert (project, list(credentials.scopes)) == ("p", [READ_ONLY])
        credentials, project = gcs._load_credentials(
            GcsCredentials(source="sdk.google.storage", credentials_json=user), [READ_ONLY]
        )
    assert isinstance(credentials, google.oauth2.credentials.Credentials)
    assert (project, credentials.refresh_token) == (None, "r")


def test_credentials_json_of_another_kind_falls_back_to_the_default_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    external = json.dumps(
        {
            "type": "external_account",
            "audience": "//iam.googleapis.com/secret-audience",
            "credential_source": {"executable": {"command": "/bin/false"}},
        }
    )
    entry = GcsCredentials(source="sdk.google.storage.credentials[0]", credentials_json=external)
    with caplog.at_level(logging.WARNING, logger="clearmount.backends.gcs"):
        assert gcs._load_credentials(entry, [READ_ONLY]) == (None, None)
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("sdk.google.storage.credentials[0]: credentials_json is of type ")
    assert "'external_account'" in message and "secret-audience" not in message
