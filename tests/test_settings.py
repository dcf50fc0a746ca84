"""Settings from the environment: typos are errors, test-only names are known and checked too."""

from __future__ import annotations

import pytest

from miniflow.ops.settings import Settings
from miniflow.persistence.sealing import new_key_line
from miniflow.protocol.errors import ConfigError


def test_an_unknown_setting_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="MINIFLOW_NAMESPAC"):
        Settings.from_env({"MINIFLOW_NAMESPAC": "x"})


def test_an_unknown_test_only_name_is_an_error_too() -> None:
    with pytest.raises(ConfigError, match="MINIFLOW_TEST_FAULTPIONT"):
        Settings.from_env({"MINIFLOW_TEST_FAULTPIONT": "executor.after_body"})


def test_fault_points_are_inert_unless_the_test_only_setting_names_them() -> None:
    assert Settings.from_env({}).faultpoints == frozenset()
    with pytest.raises(ConfigError, match="MINIFLOW_FAULTPOINT"):  # the old name no longer arms anything
        Settings.from_env({"MINIFLOW_FAULTPOINT": "executor.after_body"})
    armed = Settings.from_env({"MINIFLOW_TEST_FAULTPOINT": "executor.after_body"})
    assert armed.faultpoints == {"executor.after_body"}
    with pytest.raises(ConfigError, match="unknown point"):
        Settings.from_env({"MINIFLOW_TEST_FAULTPOINT": "nowhere"})


def test_a_data_key_comes_from_one_setting_or_a_file(tmp_path) -> None:
    line = new_key_line("k")
    assert Settings.from_env({"MINIFLOW_DATA_KEY": line}).data_keys is not None
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# rotated on Monday\n{line}\n{new_key_line('old')}\n")
    ring = Settings.from_env({"MINIFLOW_DATA_KEY_FILE": str(keyfile)}).data_keys
    assert ring is not None and ring.current == "k"
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"MINIFLOW_DATA_KEY": line, "MINIFLOW_DATA_KEY_FILE": str(keyfile)})
    with pytest.raises(ConfigError, match="32 bytes"):
        Settings.from_env({"MINIFLOW_DATA_KEY": "k:c2hvcnQ"})


def test_a_broker_url_password_is_masked_in_errors_and_descriptions() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MINIFLOW_BROKER_URL": "http://user:hunter22@host/"})
    assert "hunter22" not in str(info.value)
    described = Settings.from_env({"MINIFLOW_BROKER_URL": "amqp://user:hunter22@host/"}).describe()
    assert "hunter22" not in described and "user:***@" in described


def test_authentication_settings_are_checked_and_never_echo_a_key(tmp_path) -> None:
    from miniflow.protocol.auth import CoreKey, new_token

    assert Settings.from_env({}).auth is True and Settings.from_env({}).signed_starts is False
    assert Settings.from_env({"MINIFLOW_AUTH": "off", "MINIFLOW_SIGNED_STARTS": "required"}).auth is False
    with pytest.raises(ConfigError, match="MINIFLOW_AUTH"):
        Settings.from_env({"MINIFLOW_AUTH": "maybe"})
    with pytest.raises(ConfigError) as bad:
        Settings.from_env({"MINIFLOW_KEY": "mf_notakey_hunter2hunter2"})
    assert "hunter2" not in str(bad.value)
    token = new_token()
    path = tmp_path / "key"
    path.write_text(token + "\n")
    from_file = Settings.from_env({"MINIFLOW_KEY_FILE": str(path)})
    assert from_file.client_key is not None and token not in repr(from_file)
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"MINIFLOW_KEY": token, "MINIFLOW_KEY_FILE": str(path)})
    core = CoreKey.generate()
    parsed = Settings.from_env({"MINIFLOW_CORE_PUBLIC_KEYS": f"{core.kid}:{core.public_b64}"})
    assert list(parsed.core_public_keys) == [core.kid]
    with pytest.raises(ConfigError, match="MINIFLOW_CORE_PUBLIC_KEYS"):
        Settings.from_env({"MINIFLOW_CORE_PUBLIC_KEYS": "nothex:abc"})


def test_processes_refuse_to_start_without_their_keys(tmp_path) -> None:
    from miniflow.ops.signing import core_keys, executor_keys
    from miniflow.persistence import Database

    with pytest.raises(ConfigError, match="MINIFLOW_CORE_PUBLIC_KEYS"):
        executor_keys(Settings.from_env({}))
    assert executor_keys(Settings.from_env({"MINIFLOW_AUTH": "off"})) is None
    database = Database(f"sqlite:///{tmp_path / 'k.db'}")
    database.upgrade()
    with pytest.raises(ConfigError, match="keys core init"):
        core_keys(Settings.from_env({"MINIFLOW_DATA_KEY": new_key_line("k")}), database)
    with pytest.raises(ConfigError, match="MINIFLOW_DATA_KEY"):
        core_keys(Settings.from_env({}), database)


def test_monitoring_settings_are_read_and_bad_ones_named() -> None:
    settings = Settings.from_env({"MINIFLOW_METRICS_PORT": "9402", "MINIFLOW_RABBITMQ_API_URL": "http://mq:15672/"})
    assert settings.metrics_port == 9402 and settings.rabbitmq_api_url == "http://mq:15672"
    assert Settings.from_env({}).metrics_port is None  # off unless asked for
    for bad in ("-1", "70000", "ninety"):
        with pytest.raises(ConfigError, match="MINIFLOW_METRICS_PORT"):
            Settings.from_env({"MINIFLOW_METRICS_PORT": bad})
    with pytest.raises(ConfigError, match="MINIFLOW_RABBITMQ_API_URL") as refused:
        Settings.from_env({"MINIFLOW_RABBITMQ_API_URL": "ftp://admin:s3cret@mq"})
    assert "s3cret" not in str(refused.value)


def test_sql_spans_are_opt_in():
    assert Settings.from_env({}).trace_sql is False
    assert Settings.from_env({"MINIFLOW_TRACE_SQL": "ON"}).trace_sql is True
    assert Settings.from_env({"MINIFLOW_TRACE_SQL": "off"}).trace_sql is False
    with pytest.raises(ConfigError, match="MINIFLOW_TRACE_SQL 'yes' must be on or off"):
        Settings.from_env({"MINIFLOW_TRACE_SQL": "yes"})
