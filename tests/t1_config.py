"""clearml.conf loading: file order, HOCON and ${VAR}, schema, warnings, masking, fuzzing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhocon import config_parser

from clearmount import config
from clearmount.config import Config, ConfigError, parse_size


def write(directory: Path, text: str, name: str = "clearml.conf") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, **environ: str) -> Config:
    path = write(tmp_path, text, "explicit.conf")
    return config.load(path, {"HOME": str(tmp_path), **environ})


def warnings_about(cfg: Config, needle: str) -> list[str]:
    return [warning for warning in cfg.warnings if needle in warning]


# ------------------------------------------------------------------------------ file order


def test_explicit_file_wins_over_environment_and_home(tmp_path: Path) -> None:
    write(tmp_path, "sdk.aws.s3.region: home")
    env_file = write(tmp_path, "sdk.aws.s3.region: env", "env.conf")
    explicit = write(tmp_path, "sdk.aws.s3.region: explicit", "explicit.conf")
    environ = {"HOME": str(tmp_path), "CLEARML_CONFIG_FILE": str(env_file)}
    cfg = config.load(explicit, environ)
    assert cfg.files == (explicit,)
    assert cfg.s3.defaults.region == "explicit"


def test_clearml_config_file_is_read_alone(tmp_path: Path) -> None:
    write(tmp_path, "sdk.aws.s3.region: home")
    env_file = write(tmp_path, "sdk.aws.s3.profile: p", "env.conf")
    cfg = config.load(None, {"HOME": str(tmp_path), "CLEARML_CONFIG_FILE": str(env_file)})
    assert cfg.files == (env_file,)
    assert cfg.s3.defaults.region == ""
    assert cfg.s3.defaults.profile == "p"


def test_trains_config_file_and_tilde(tmp_path: Path) -> None:
    env_file = write(tmp_path, "sdk.aws.s3.region: trains", "legacy.conf")
    cfg = config.load(None, {"HOME": str(tmp_path), "TRAINS_CONFIG_FILE": "~/legacy.conf"})
    assert cfg.files == (env_file,)
    assert cfg.s3.defaults.region == "trains"


@pytest.mark.parametrize("variable", ["CLEARML_CONFIG_FILE", "TRAINS_CONFIG_FILE"])
def test_named_file_missing_is_an_error(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"{variable}=.*nope\.conf: no such config file"):
        config.load(None, {"HOME": str(tmp_path), variable: str(tmp_path / "nope.conf")})
    with pytest.raises(ConfigError, match=r"nope\.conf: no such config file"):
        config.load(tmp_path / "nope.conf", {"HOME": str(tmp_path)})


def test_home_clearml_conf_merges_over_trains_conf(tmp_path: Path) -> None:
    trains = write(tmp_path, "sdk.aws.s3 { region: r1, key: old, profile: kept }", "trains.conf")
    clearml = write(tmp_path, "sdk.aws.s3 { region: r2, secret: s }")
    cfg = config.load(None, {"HOME": str(tmp_path)})
    assert cfg.files == (trains, clearml)
    assert (cfg.s3.defaults.region, cfg.s3.defaults.key) == ("r2", "old")
    assert cfg.s3.defaults.profile == "kept"
    assert cfg.s3.defaults.secret == "s"


def test_lists_are_replaced_not_concatenated(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sdk.aws.s3.credentials: [{bucket: a, key: k, secret: s}, {bucket: b, key: k, secret: s}]",
        "trains.conf",
    )
    write(tmp_path, "sdk.aws.s3.credentials: [{bucket: c, key: k, secret: s}]")
    cfg = config.load(None, {"HOME": str(tmp_path)})
    assert [entry.bucket for entry in cfg.s3.credentials] == ["c"]


def test_no_file_at_all_gives_defaults(tmp_path: Path) -> None:
    cfg = config.load(None, {"HOME": str(tmp_path)})
    assert cfg.files == ()
    assert cfg.s3.credentials == ()
    assert cfg.s3.boto3 == config.Boto3Settings()
    assert cfg.direct_access == (config.DirectAccessRule("default", "file://*"),)
    assert cfg.cache.base_dir == tmp_path / ".clearml" / "cache"
    assert cfg.warnings == ()


# ------------------------------------------------------------------------------ HOCON forms


def test_sdk_form(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk {
          aws { s3 { credentials: [ { bucket: "b", key: k, secret: s } ] } }
          azure.storage.containers: [ { account_name: a, account_key: k } ]
          google.storage { project: p }
          storage { cache { default_base_dir: "/var/cache/x" } }
        }
        """,
    )
    assert cfg.warnings == ()
    assert cfg.s3.credentials[0].bucket == "b"
    assert cfg.azure.containers[0].account_name == "a"
    assert cfg.gcs.defaults.project == "p"
    assert cfg.cache.base_dir == Path("/var/cache/x")


def test_bare_form_is_read_with_a_warning(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        aws { s3 { credentials: [ { bucket: "b", key: k, secret: s, bogus: 1 } ] } }
        azure.storage.containers: [ { account_name: a, account_key: k } ]
        google.storage { project: p }
        storage { cache { default_base_dir: "/var/cache/x" } }
        """,
    )
    path = tmp_path / "explicit.conf"
    for section in ("aws", "azure", "google", "storage"):
        assert warnings_about(cfg, f"{path}: {section}: outside sdk"), section
        assert "ClearML SDK ignores it" in warnings_about(cfg, f"{path}: {section}:")[0]
    assert cfg.s3.credentials[0].bucket == "b"
    assert cfg.azure.containers[0].account_name == "a"
    assert cfg.gcs.defaults.project == "p"
    assert cfg.cache.base_dir == Path("/var/cache/x")
    # keys inside the bare form are named as the user wrote them
    assert warnings_about(cfg, f"{path}: aws.s3.credentials[0].bogus: unknown key")


def test_sdk_form_wins_over_bare_form_in_one_file(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "sdk.aws.s3.region: inside\naws.s3.region: bare\n")
    assert cfg.s3.defaults.region == "inside"


def test_other_top_level_sections_are_ignored_silently(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "api { host: x }\nagent { foo: 1 }\nsdk.development { x: 1 }")
    assert cfg.warnings == ()


# ------------------------------------------------------------------------------ substitutions


def test_variable_comes_from_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CM_TEST_SECRET", "from-os-environ")
    before = dict(os.environ)
    cfg = load_text(
        tmp_path,
        "sdk.aws.s3 { key: ${CM_TEST_KEY}, secret: ${CM_TEST_SECRET}, region: ${?CM_TEST_R} }",
        CM_TEST_KEY="passed-key",
        CM_TEST_SECRET="passed-secret",
    )
    assert cfg.s3.defaults.key == "passed-key"
    assert cfg.s3.defaults.secret == "passed-secret"
    assert cfg.s3.defaults.region == ""
    # nothing leaks in either direction
    assert dict(os.environ) == before
    assert "CM_TEST_KEY" not in os.environ
    assert config_parser.os is os


def test_variable_from_the_same_file(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path, 'minio = "m:9000"\nsdk.aws.s3.credentials: [{host: ${minio}, key: k, secret: s}]'
    )
    assert cfg.s3.credentials[0].host == "m:9000"


def test_unset_variable_is_an_error_naming_file_and_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "sdk {\n  aws.s3.key: ${CM_TEST_UNSET}\n}")
    message = str(info.value)
    assert "CM_TEST_UNSET" in message
    assert str(tmp_path / "explicit.conf") in message
    assert "line 2" in message
    assert "\n" not in message


def test_optional_variable(tmp_path: Path) -> None:
    text = "sdk.aws.s3.region: eu-west-1\nsdk.aws.s3.region: ${?CM_TEST_REGION}"
    assert load_text(tmp_path, text).s3.defaults.region == "eu-west-1"
    cfg = load_text(tmp_path, text, CM_TEST_REGION="us-east-2")
    assert cfg.s3.defaults.region == "us-east-2"


def test_parse_error_is_one_line_and_hides_the_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, 'sdk {\n  aws.s3.secret: "hunter2" }\n}\n}')
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'explicit.conf'}: cannot parse: line ")
    assert "\n" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "text",
    [
        'sdk.aws.s3.secret: "hunter2" [1]',
        "sdk.aws.s3.secret: hunter2 {a: 1}",
        'sdk.aws.s3.credentials: [{secret: "hunter2"}] {b: 1}',
        "sdk.aws.s3.secret: hunter2 ${?X} [1]",
        "sdk.aws.s3 { secret: hunter2 ",
    ],
)
def test_no_parse_error_repeats_a_value(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert "cannot parse" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


def test_not_utf8_and_a_list_root_are_parse_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(b"sdk.aws.s3.key: \xff\xfe")
    with pytest.raises(ConfigError, match="cannot parse: not UTF-8"):
        config.load(path, {"HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="cannot parse: the file is a list"):
        load_text(tmp_path, "[1, 2]")


def test_missing_include_is_a_warning(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, 'include "other.conf"\nsdk.aws.s3.region: r')
    assert cfg.s3.defaults.region == "r"
    assert warnings_about(cfg, "other.conf")


def test_include_is_followed(tmp_path: Path) -> None:
    write(tmp_path, "sdk.aws.s3.region: included", "other.conf")
    cfg = load_text(tmp_path, 'include "other.conf"\nsdk.aws.s3.profile: p')
    assert (cfg.s3.defaults.region, cfg.s3.defaults.profile) == ("included", "p")


# ------------------------------------------------------------------------------ validation


def test_unknown_keys_are_warnings_naming_file_and_key(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.s3 {
          endpoint_url: "http://x"
          credentials: [ { bucket: b, key: k, secret: s, path_style: true } ]
        }
        sdk.azure.storage.containers: [ { account_name: a, account_key: k, container_sas: x } ]
        sdk.google.storage.credentials: [ { bucket: g, color: blue } ]
        """,
    )
    path = tmp_path / "explicit.conf"
    assert warnings_about(cfg, f"{path}: sdk.aws.s3.endpoint_url: unknown key")
    entry = warnings_about(cfg, f"{path}: sdk.aws.s3.credentials[0].path_style: unknown key")
    assert entry and "TypeError" in entry[0]
    assert warnings_about(cfg, f"{path}: sdk.azure.storage.containers[0].container_sas")
    assert warnings_about(cfg, f"{path}: sdk.google.storage.credentials[0].color")
    # the entries themselves are still used
    assert cfg.s3.credentials[0].bucket == "b"
    assert cfg.azure.containers[0].account_name == "a"
    assert len(cfg.warnings) == 4


def test_warning_names_the_file_that_set_the_key(tmp_path: Path) -> None:
    trains = write(tmp_path, "sdk.aws.s3 { typo_key: 1 }", "trains.conf")
    clearml = write(tmp_path, "sdk.aws.s3 { other_typo: 1 }")
    cfg = config.load(None, {"HOME": str(tmp_path)})
    assert warnings_about(cfg, f"{trains}: sdk.aws.s3.typo_key")
    assert warnings_about(cfg, f"{clearml}: sdk.aws.s3.other_typo")


def test_entry_without_credentials_is_dropped_with_a_warning(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.s3.credentials: [
          { bucket: a, key: k }
          { bucket: b, use_credentials_chain: true }
          { bucket: c, key: k, secret: s }
          "not an object"
        ]
        """,
    )
    assert [entry.bucket for entry in cfg.s3.credentials] == ["b", "c"]
    assert [entry.source for entry in cfg.s3.credentials] == [
        "sdk.aws.s3.credentials[1]",
        "sdk.aws.s3.credentials[2]",
    ]
    path = tmp_path / "explicit.conf"
    assert warnings_about(
        cfg,
        f"{path}: sdk.aws.s3.credentials[0]: no key/secret and no use_credentials_chain; "
        "entry ignored",
    )
    assert warnings_about(cfg, f"{path}: sdk.aws.s3.credentials[3]: expected an object")


def test_quoted_secure_false_is_false_with_a_warning(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.s3.credentials: [
          { host: "a:9000", key: k, secret: s, secure: "false" }
          { host: "b:9000", key: k, secret: s, secure: false }
        ]
        """,
    )
    quoted, plain = cfg.s3.credentials
    assert quoted.secure is False
    assert quoted.endpoint_url == "http://a:9000"
    assert plain.endpoint_url == "http://b:9000"
    found = warnings_about(cfg, "sdk.aws.s3.credentials[0].secure")
    assert len(found) == 1
    assert "ClearML SDK treats as true" in found[0]
    assert len(cfg.warnings) == 1


def test_junk_values_warn_and_use_defaults(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.s3.credentials: [
          { bucket: b, key: k, secret: s, token: [1, 2], use_credentials_chain: maybe,
            multipart: {}, secure: 1e400 }
        ]
        sdk.aws.boto3 { max_multipart_concurrency: lots, read_timeout: -3, connect_timeout: 5 }
        sdk.azure.storage.max_connections: "x"
        """,
    )
    entry = cfg.s3.credentials[0]
    assert (entry.token, entry.multipart, entry.use_credentials_chain) == ("", True, False)
    assert entry.secure is True
    assert cfg.s3.boto3.max_multipart_concurrency == 16
    assert cfg.s3.boto3.read_timeout == config.MOUNT_READ_TIMEOUT  # rejected: the default
    assert cfg.s3.boto3.connect_timeout == 5
    assert (cfg.s3.boto3.connect_timeout_set, cfg.s3.boto3.read_timeout_set) == (True, False)
    assert cfg.azure.max_connections == 0
    for key in (
        "credentials[0].token",
        "credentials[0].use_credentials_chain",
        "credentials[0].secure",
        "credentials[0].multipart",
        "boto3.max_multipart_concurrency",
        "boto3.read_timeout",
        "storage.max_connections",
    ):
        assert warnings_about(cfg, key), key


def test_host_with_a_scheme_is_fixed_with_a_warning(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path, 'sdk.aws.s3.credentials: [{host: "http://m:9000/", key: k, secret: s}]'
    )
    assert cfg.s3.credentials[0].host == "m:9000"
    assert cfg.s3.credentials[0].endpoint_url == "http://m:9000"
    assert warnings_about(cfg, "credentials[0].host: must be")


def test_bucket_is_cleaned_and_numbers_are_names(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """sdk.aws.s3.credentials: [
          {bucket: "'data/'", key: k, secret: s}
          {bucket: 2024, key: 1234, secret: s}
        ]""",
    )
    assert [entry.bucket for entry in cfg.s3.credentials] == ["data", "2024"]
    assert cfg.s3.credentials[1].key == "1234"
    assert cfg.warnings == ()


def test_verify(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.s3 {
          verify: false
          credentials: [
            { bucket: a, key: k, secret: s, verify: false }
            { bucket: b, key: k, secret: s, verify: "/etc/ca.pem" }
            { bucket: c, key: k, secret: s }
            { bucket: d, key: k, secret: s, verify: "s3://certs/ca.pem" }
          ]
        }
        """,
    )
    assert cfg.s3.defaults.verify is None
    assert [entry.verify for entry in cfg.s3.credentials] == [False, "/etc/ca.pem", None, None]
    top = warnings_about(cfg, "sdk.aws.s3.verify")
    assert top and "ignored by ClearML" in top[0]
    assert warnings_about(cfg, "credentials[3].verify: a CA bundle URL")


def test_entries_do_not_inherit_top_level_settings(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.s3 {
          region: eu-west-1, secure: false, profile: p, use_credentials_chain: true, token: t
          credentials: [ { host: "h:9000", key: k, secret: s } ]
        }
        """,
    )
    entry = cfg.s3.credentials[0]
    assert (entry.region, entry.profile, entry.token) == ("", "", "")
    assert entry.secure is True
    assert entry.use_credentials_chain is False
    defaults = cfg.s3.defaults
    assert (defaults.region, defaults.secure, defaults.use_credentials_chain) == (
        "eu-west-1",
        False,
        True,
    )


def test_environment_fallbacks_apply_to_defaults_only(tmp_path: Path) -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "AKIAENVENVENVENVENV1",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
        "AWS_DEFAULT_REGION": "env-region",
        "AWS_PROFILE": "env-profile",
    }
    cfg = load_text(tmp_path, "sdk.aws.s3.credentials: [{bucket: b, key: k}]", **environ)
    defaults = cfg.s3.defaults
    assert defaults.source == "environment"
    assert (defaults.key, defaults.secret, defaults.token) == (
        "AKIAENVENVENVENVENV1",
        "env-secret",
        "env-token",
    )
    assert (defaults.region, defaults.profile) == ("env-region", "env-profile")
    # the entry without a secret is not completed from the environment
    assert cfg.s3.credentials == ()

    # a configured value wins over the environment
    cfg = load_text(tmp_path, "sdk.aws.s3 { key: cfgkey, secret: cfgsecret, region: r }", **environ)
    assert (cfg.s3.defaults.key, cfg.s3.defaults.secret) == ("cfgkey", "cfgsecret")
    assert cfg.s3.defaults.region == "r"
    assert cfg.s3.defaults.token == "env-token"
    assert cfg.s3.defaults.source == "sdk.aws.s3"


def test_boto3_settings(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.aws.boto3 {
          pool_connections: 1024
          max_multipart_concurrency: 4
          multipart_threshold: 16777216
          multipart_chunksize: "32MiB"
          connect_timeout: 5.5
          read_timeout: 30
          signature_version: s3
          stream_connections: 64
          s3 { addressing_style: virtual }
        }
        """,
    )
    assert cfg.s3.boto3 == config.Boto3Settings(
        pool_connections=1024,
        max_multipart_concurrency=4,
        multipart_threshold=16 * 2**20,
        multipart_chunksize=32 * 2**20,
        connect_timeout=5.5,
        read_timeout=30,
        signature_version="s3",
        addressing_style="virtual",
        connect_timeout_set=True,
        read_timeout_set=True,
    )
    assert cfg.warnings == ()


def test_boto3_pool_never_below_512_and_bad_style(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "sdk.aws.boto3 { pool_connections: 8, s3.addressing_style: side }")
    assert cfg.s3.boto3.pool_connections == 512
    assert cfg.s3.boto3.addressing_style is None
    assert warnings_about(cfg, "sdk.aws.boto3.s3.addressing_style")


def test_azure(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.azure.storage {
          max_connections: 4
          containers: [
            { account_name: a1, account_key: k1, container_name: c1 }
            { account_name: a2, account_key: k2, endpoint: "http://127.0.0.1:10000/a2/" }
            { account_name: a3 }
          ]
        }
        """,
        AZURE_STORAGE_ACCOUNT="envacct",
        AZURE_STORAGE_KEY="envkey",
    )
    az = cfg.azure
    assert az.max_connections == 4
    assert [c.account_name for c in az.containers] == ["a1", "a2", "envacct"]
    assert az.containers[0].container_name == "c1"
    assert az.containers[1].endpoint == "http://127.0.0.1:10000/a2"
    assert az.containers[-1].source == "environment"
    assert az.containers[-1].container_name == ""
    # the endpoint extension is not an unknown key; the entry without a key is dropped
    assert len(cfg.warnings) == 1
    assert warnings_about(cfg, "containers[2]: needs both account_name and account_key")


def test_gcs(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.google.storage {
          project: proj
          credentials: [
            { bucket: b1, subdir: "/path/in/", credentials_json: "/keys/b1.json" }
            { bucket: b2, credentials_json: { type: service_account, private_key: pk } }
            { subdir: nobucket }
          ]
        }
        """,
        GOOGLE_APPLICATION_CREDENTIALS="/keys/adc.json",
    )
    gcs = cfg.gcs
    assert gcs.defaults.project == "proj"
    assert gcs.defaults.credentials_json == "/keys/adc.json"
    assert gcs.defaults.source == "environment"
    first, second = gcs.credentials
    assert (first.bucket, first.subdir, first.project) == ("b1", "path/in", None)
    assert second.credentials_json is not None
    assert json.loads(second.credentials_json)["private_key"] == "pk"
    assert warnings_about(cfg, "credentials[2]: no bucket; entry ignored")


def test_direct_access_and_path_substitution(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.storage {
          direct_access: [ { url: "file://*" }, { url: "s3://nfs-bucket/*" }, { url: 3 } ]
          path_substitution: [
            { registered_prefix: "s3://b/", local_prefix: "/mnt/b/", replace_linux_sep: true }
            { registered_prefix: "s3://c/" }
          ]
        }
        """,
    )
    assert [rule.url for rule in cfg.direct_access] == ["file://*", "s3://nfs-bucket/*"]
    assert cfg.direct_access[1].source == "sdk.storage.direct_access[1]"
    (sub,) = cfg.path_substitution
    assert (sub.registered_prefix, sub.local_prefix) == ("s3://b/", "/mnt/b/")
    assert (sub.replace_linux_sep, sub.replace_windows_sep) == (True, False)
    assert warnings_about(cfg, "direct_access[2].url")
    assert warnings_about(cfg, "path_substitution[1]: needs both")
    assert load_text(tmp_path, "sdk.storage.direct_access: []").direct_access == ()


# ------------------------------------------------------------------------------ cache


def test_cache_dir_order(tmp_path: Path) -> None:
    text = 'sdk.storage.cache.default_base_dir: "$CM_ROOT/configured"'
    assert load_text(tmp_path, text, CM_ROOT="/r").cache.base_dir == Path("/r/configured")
    assert load_text(tmp_path, text, CM_ROOT="/r", TRAINS_CACHE_DIR="/t").cache.base_dir == Path(
        "/t"
    )
    cfg = load_text(tmp_path, text, TRAINS_CACHE_DIR="/t", CLEARML_CACHE_DIR="~/env-cache")
    assert cfg.cache.base_dir == tmp_path / "env-cache"
    assert load_text(tmp_path, "").cache.base_dir == tmp_path / ".clearml" / "cache"


def test_relative_cache_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_text(tmp_path, "sdk.storage.cache.default_base_dir: rel/cache")
    assert cfg.cache.base_dir == tmp_path / "rel" / "cache"


def test_cache_limits(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk.storage.cache.disk_space_file_size_strategy {
          enabled: true
          size { max_used_bytes: 50GB, min_free_bytes: -1 }
        }
        """,
    )
    assert (cfg.cache.max_used_bytes, cfg.cache.min_free_bytes) == (50 * 10**9, None)
    assert cfg.warnings == ()
    # the Enterprise docs' spelling is read too; the open-source one wins
    cfg = load_text(
        tmp_path,
        """
        sdk.storage.cache {
          size { max_used_bytes: "10GiB", min_free_bytes: 1000 }
          disk_space_file_size_strategy.size.min_free_bytes: 5GB
        }
        """,
    )
    assert (cfg.cache.max_used_bytes, cfg.cache.min_free_bytes) == (10 * 2**30, 5 * 10**9)
    cfg = load_text(tmp_path, "sdk.storage.cache.size.max_used_bytes: lots")
    assert cfg.cache.max_used_bytes is None
    assert warnings_about(cfg, "sdk.storage.cache.size.max_used_bytes: expected a size")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("50GB", 50 * 10**9),
        ("10GiB", 10 * 2**30),
        ("100MiB", 100 * 2**20),
        ("500MB", 500 * 10**6),
        ("1.5G", 1_500_000_000),
        ("123", 123),
        (" 8 kb ", 8000),
        ("2TiB", 2 * 2**40),
        ("7b", 7),
        ("-1", -1),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("junk", ["", "GB", "ten", "10 XB", "1e9", "1..5G", "10GB!", "--1"])
def test_parse_size_junk(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_size(junk)


def test_parse_size_rejects_bool() -> None:
    with pytest.raises(ValueError):
        parse_size(True)


# ------------------------------------------------------------------------------ describe

SECRETS = (
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "sessiontokenvalue",
    "minioadmin-secret",
    "azure+account/key==",
    "sas-signature-value",
    "gcs-private-key-material",
    "env-only-secret",
)


def test_describe_masks_every_secret(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        sdk {
          aws.s3 {
            key: "AKIAIOSFODNN7EXAMPLE"
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            token: "sessiontokenvalue"
            credentials: [
              { host: "minio:9000", key: "minioadmin", secret: "minioadmin-secret", secure: 0 }
              { bucket: b, key: "AKIAIOSFODNN7EXAMPLE", secret: [ "sessiontokenvalue" ] }
            ]
          }
          azure.storage.containers: [
            { account_name: acct, account_key: "azure+account/key==",
              endpoint: "https://acct.blob.example/?sig=sas-signature-value" }
          ]
          google.storage.credentials: [
            { bucket: g, credentials_json: "{\\"private_key\\": \\"gcs-private-key-material\\"}" }
          ]
        }
        """,
        AZURE_STORAGE_ACCOUNT="envacct",
        AZURE_STORAGE_KEY="env-only-secret",
    )
    text = config.describe(cfg)
    for secret in SECRETS:
        assert secret not in text, secret
        assert all(secret not in warning for warning in cfg.warnings), secret
        assert secret not in repr(cfg) or secret.startswith("AKIA"), secret
    assert "minioadmin" not in text  # a short key id is masked whole
    assert "AKIA****" in text
    assert "****" in text
    assert "http://minio:9000" in text
    assert str(cfg.cache.base_dir) in text
    assert "explicit.conf" in text


def test_describe_with_nothing_configured(tmp_path: Path) -> None:
    text = config.describe(config.load(None, {"HOME": str(tmp_path)}))
    assert "(none: defaults and environment only)" in text
    assert "file://*" in text


def test_timeouts_unset_are_the_mount_defaults_and_say_so(tmp_path: Path) -> None:
    cfg = config.load(None, {"HOME": str(tmp_path)})
    for deadlines in (cfg.s3.boto3.deadlines, cfg.azure.deadlines, cfg.gcs.deadlines):
        assert (deadlines.connect, deadlines.read) == (10, 30)
        # a lookup within the minute, retries included; a download stalls below 1 MiB / 40 s
        assert (deadlines.operation, deadlines.stall_window) == (45, 40)
    lines = config.describe(cfg).splitlines()
    s3 = lines[lines.index("s3:") + 3]  # after the defaults and boto3 lines
    assert s3 == (
        "  deadlines: connect_timeout 10s (mount default; clearml.conf "
        "sdk.aws.boto3.connect_timeout unset), read_timeout 30s (mount default; clearml.conf "
        "sdk.aws.boto3.read_timeout unset); a lookup gives up after 45s; a download is stalled "
        "below 1 MiB per 40s, and given up after 45s without 1 MiB"
    )
    azure = next(line for line in lines if line.startswith("azure:"))
    assert lines[lines.index(azure) + 1].startswith(
        "  deadlines: connect_timeout 10s (mount default; no clearml.conf key)"
    )


def test_timeouts_set_in_clearml_conf_win_and_stretch_the_deadlines(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "sdk.aws.boto3 { connect_timeout: 60, read_timeout: 60 }")
    deadlines = cfg.s3.boto3.deadlines
    assert (deadlines.connect, deadlines.read, deadlines.connect_set) == (60, 60, True)
    assert (deadlines.operation, deadlines.stall_window) == (120, 120)  # connect + read
    text = config.describe(cfg)
    assert "connect_timeout 60s (clearml.conf sdk.aws.boto3.connect_timeout)" in text
    assert "read_timeout 60s (clearml.conf sdk.aws.boto3.read_timeout)" in text
    assert "a lookup gives up after 120s" in text


# ------------------------------------------------------------------------------ fuzzing

KEYS = (
    "sdk",
    "aws",
    "s3",
    "boto3",
    "credentials",
    "bucket",
    "host",
    "key",
    "secret",
    "token",
    "region",
    "profile",
    "secure",
    "verify",
    "multipart",
    "use_credentials_chain",
    "subdir",
    "azure",
    "storage",
    "containers",
    "account_name",
    "account_key",
    "container_name",
    "endpoint",
    "max_connections",
    "google",
    "project",
    "credentials_json",
    "cache",
    "default_base_dir",
    "disk_space_file_size_strategy",
    "size",
    "max_used_bytes",
    "min_free_bytes",
    "direct_access",
    "url",
    "path_substitution",
    "registered_prefix",
    "local_prefix",
    "replace_linux_sep",
    "pool_connections",
    "multipart_chunksize",
    "connect_timeout",
    "addressing_style",
    "include",
)
RAW = ("${?NOPE}", "${SET}", "${NOPE}", "10GB", "true", "null", "off", '"false"', "-1", "1e400")


class Raw(str):
    """Text written into the HOCON as it is, unquoted."""


def render(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + "\n".join(f"{render_key(k)}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    return json.dumps(value)


def render_key(key: str) -> str:
    return key if key.replace(".", "").replace("_", "").isalnum() else json.dumps(key)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["false", "yes", "10GiB", "http://h:9000", "s3://b/x", "{", "$X"]),
    st.sampled_from(RAW).map(Raw),
)
keys = st.one_of(
    st.sampled_from(KEYS),
    st.lists(st.sampled_from(KEYS), min_size=2, max_size=4).map(".".join),
    st.text(min_size=1, max_size=6),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)
documents = st.dictionaries(keys, values, max_size=5).map(
    lambda doc: "\n".join(f"{render_key(k)}: {render(v)}" for k, v in doc.items())
)
TOKENS = (
    *KEYS,
    *RAW,
    "{",
    "}",
    "[",
    "]",
    ":",
    "=",
    "+=",
    ",",
    "\n",
    " ",
    '"',
    ".",
    "#",
    "//",
    "${",
    '"x"',
    "1.5",
    '"""',
)
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


def assert_loads_or_config_error(directory: Path, text: str) -> None:
    path = directory / "fuzz.conf"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = config.load(path, {"HOME": str(directory), "SET": "value"})
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(cfg, Config)
    assert all("\n" not in warning for warning in cfg.warnings)
    config.describe(cfg)


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=st.one_of(documents, token_soup, st.text(max_size=200)))
def test_fuzz_only_config_error(fuzz_dir: Path, text: str) -> None:
    assert_loads_or_config_error(fuzz_dir, text)


@FUZZ
@given(doc=st.dictionaries(keys, values, max_size=4))
def test_fuzz_under_every_section(fuzz_dir: Path, doc: dict[str, object]) -> None:
    body = render(doc)
    sections = (
        "sdk.aws.s3",
        "sdk.aws.s3.credentials",
        "sdk.aws.boto3",
        "sdk.azure.storage",
        "sdk.azure.storage.containers",
        "sdk.google.storage.credentials",
        "sdk.storage",
        "sdk.storage.cache",
        "sdk.storage.direct_access",
        "aws.s3",
    )
    text = "\n".join(
        f"{section}: [{body}]"
        if section.endswith(("credentials", "containers", "access"))
        else f"{section}: {body}"
        for section in sections
    )
    assert_loads_or_config_error(fuzz_dir, text)


# ------------------------------------------------------------------------------ http(s)


def test_files_server_defaults_as_the_clearml_sdk(tmp_path: Path) -> None:
    cfg = config.load(None, {"HOME": str(tmp_path)})
    assert cfg.http.api_server == "https://api.clear.ml"
    assert [h.url for h in cfg.http.auth_hosts] == [
        "https://files.clear.ml",
        "https://files.community.clear.ml",
    ]
    # unset: the mount's own deadlines, as for every backend (ClearML's are 30 s and 30 s)
    assert (cfg.http.connect_timeout, cfg.http.read_timeout, cfg.http.max_retries) == (10, 30, 15)
    assert not (cfg.http.connect_timeout_set or cfg.http.read_timeout_set)
    assert "sdk.http.timeout.connection unset" in config.describe(cfg)


def test_http_timeouts_set_in_clearml_conf_win(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("sdk.http { timeout { connection: 5, total: 50 }, download.max_retries: 3 }")
    cfg = config.load(conf, {"HOME": str(tmp_path)})
    deadlines = cfg.http.deadlines
    assert (deadlines.connect, deadlines.read, cfg.http.max_retries) == (5, 50, 3)
    assert deadlines.connect_set and deadlines.read_set
    assert deadlines.operation == 55  # one whole request fits
    assert "read_timeout 50s (clearml.conf sdk.http.timeout.total)" in config.describe(cfg)


@pytest.mark.parametrize(
    ("api", "files"),
    [
        ('api_server: "http://clearml:8008"', "http://clearml:8081"),
        ('api_server: "https://api.example.com"', "https://files.example.com"),
        ('api_server: "https://demoapi.example.com"', "https://demofiles.example.com"),
        ('api_server: "http://clearml:8008", web_server: "http://web:8080"', "http://web:8081"),
        ('api_server: "http://x:8008", files_server: "http://F:9000/"', "http://f:9000"),
    ],
)
def test_files_server_derived_from_the_api_server(tmp_path: Path, api: str, files: str) -> None:
    cfg = load_text(tmp_path, f"api {{ {api} }}")
    assert cfg.http.auth_hosts[0].url == files


def test_http_environment_wins_and_sdk_keys_are_read(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
        api { files_server: "http://conf:8081", credentials { access_key: ak, secret_key: sk } }
        sdk {
          http { timeout { connection: 2, total: 7 }, download { max_retries: 3 } }
          storage.http {
            legacy_fileservers: ["http://old:8081"]
            hosts: ["http://pub:80", "ftp://x", "http://h/p"]
          }
          metrics.plot_upload_destination: "https://plots.example/p"
        }
        """,
        CLEARML_FILES_HOST="http://env-files:8081",
        CLEARML_API_HOST="http://env-api:8008",
        CLEARML_API_ACCESS_KEY="env-access",
        CLEARML_API_SECRET_KEY="env-secret-value",
    )
    http = cfg.http
    assert http.api_server == "http://env-api:8008"
    assert (http.access_key, http.secret_key) == ("env-access", "env-secret-value")
    assert [(h.url, h.source) for h in http.auth_hosts] == [
        ("http://env-files:8081", "CLEARML_FILES_HOST"),
        ("https://files.community.clear.ml", "ClearML built-in legacy file server"),
        ("http://old:8081", "sdk.storage.http.legacy_fileservers[0]"),
        ("https://plots.example/p", "sdk.metrics.plot_upload_destination"),
    ]
    assert [h.url for h in http.plain_hosts] == ["http://pub:80"]
    assert len(warnings_about(cfg, "sdk.storage.http.hosts[")) == 2
    assert (http.connect_timeout, http.read_timeout, http.max_retries) == (2, 7, 3)
    # the plot destination's path narrows the token to that path, the host is reachable
    assert http.auth_for("https://plots.example/p/x.png") is not None
    assert http.auth_for("https://plots.example/other") is None
    assert http.host_entry("https", "plots.example") is not None


def test_describe_masks_the_clearml_api_keys(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        'api { credentials { access_key: "ACCESS-KEY-VALUE", secret_key: "SECRET-KEY-VALUE" } }',
    )
    text = config.describe(cfg)
    assert "ACCESS-KEY-VALUE" not in text and "SECRET-KEY-VALUE" not in text
    assert "ACCESS-KEY-VALUE" not in repr(cfg) and "SECRET-KEY-VALUE" not in repr(cfg)
    assert "https://files.clear.ml (ClearML default)" in text
