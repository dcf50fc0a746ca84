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
