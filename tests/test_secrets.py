"""Secrets: masked as whole values, sealed at rest, kept out of the dead-letter archive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from miniflow.coordinator import loads
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.persistence.sealing import KeyRing, is_sealed, new_key_line, open_params, seal_params
from miniflow.protocol.envelope import envelope
from miniflow.protocol.errors import ConfigError, SealError
from miniflow.protocol.masking import mask_fields, mask_values
from miniflow.protocol.names import EXECUTE_STEP

ROOT = Path(__file__).resolve().parent.parent
MINIFLOW = Path(sys.executable).parent / "miniflow"
SECRET_WORKFLOW = """
name: with-token
params: {token: {required: true, secret: true}, region: {default: eu}}
steps:
  - {name: use, task: test.secret_length}
"""


def test_a_short_secret_does_not_corrupt_an_error_message() -> None:
    error = "TimeoutError: step exceeded its timeout of 3s"
    assert mask_values(error, {"token": "t"}, ["token"]) == error
    assert mask_values(error, {"token": 3}, ["token"]) == error


def test_a_long_secret_is_masked_wherever_it_appears_in_text_in_all_its_forms() -> None:
    params = {"token": "s3cr3t-value", "nested": {"pin": 12345678}}
    text_ = "token s3cr3t-value was refused ('s3cr3t-value'); pin 12345678"
    masked = mask_values(text_, params, ["token", "nested"])
    assert "s3cr3t-value" not in masked and "12345678" not in masked
    assert masked.startswith("token *** was refused")


def test_outputs_and_config_are_masked_by_field_at_any_depth() -> None:
    value = {"token": "t", "rows": [{"token": "x", "n": 1}], "other": "kept"}
    assert mask_fields(value, {"token"}) == {"token": "***", "rows": [{"token": "***", "n": 1}], "other": "kept"}


def test_an_embedded_run_with_a_short_secret_keeps_its_error_readable(engine: EmbeddedEngine) -> None:
    engine.deploy(loads("name: short\nparams: {token: {secret: true}}\n"
                        "steps:\n  - {name: a, task: test.timeout_error}\n"))
    run = engine.wait(engine.submit("short", {"token": "t"}), timeout=30)
    assert run.status == "failed"
    assert "step exceeded its deadline in this timeout test" in (run.attempts[0].error or "")


def test_secret_params_are_sealed_at_rest_and_the_step_gets_them_in_the_clear(tmp_path: Path) -> None:
    ring = KeyRing.parse(new_key_line("k1"), "test")
    with EmbeddedEngine(f"sqlite:///{tmp_path / 'sealed.db'}", threads=2, keys=ring) as engine:
        engine.deploy(loads(SECRET_WORKFLOW))
        run = engine.wait(engine.submit("with-token", {"token": "s3cr3t-value-1234"}), timeout=30)
        assert run.status == "succeeded"
        assert run.steps[0].output == {"length": len("s3cr3t-value-1234")}  # the executor had the value
        with engine.db.connect() as conn:
            stored = conn.execute(text("select params from runs")).scalar_one()
            row = repo.get_run(conn, run.run_id)
    assert "s3cr3t-value" not in str(stored)
    assert row is not None and is_sealed(row.params["token"]) and row.params["region"] == "eu"
    assert row.params["token"].startswith("mfenc:v1:k1:")
    assert open_params(row.params, ring)["token"] == "s3cr3t-value-1234"


def test_a_sealed_value_opens_only_with_its_key_and_detects_tampering() -> None:
    ring = KeyRing.parse(new_key_line("a"), "test")
    sealed = seal_params({"token": {"deep": [1, "x"]}}, {"token"}, ring)["token"]
    assert ring.open(sealed, "token") == {"deep": [1, "x"]}
    with pytest.raises(SealError, match="not configured"):
        KeyRing.parse(new_key_line("b"), "test").open(sealed, "token")
    with pytest.raises(SealError, match="altered"):
        ring.open(sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"), "token")
    with pytest.raises(SealError):
        ring.open(sealed, "another_param")  # bound to the param's name
    with pytest.raises(ConfigError, match="need a data key"):
        seal_params({"token": "x"}, {"token"}, None)


def test_rotating_the_data_key_seals_stored_params_with_the_new_one(tmp_path: Path) -> None:
    old, new = new_key_line("old"), new_key_line("new")
    db = f"sqlite:///{tmp_path / 'rotate.db'}"
    with EmbeddedEngine(db, threads=2, keys=KeyRing.parse(old, "test")) as engine:
        engine.deploy(loads(SECRET_WORKFLOW))
        run_id = engine.wait(engine.submit("with-token", {"token": "rotate-me-please"}), timeout=30).run_id
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"{new}\n{old}\n")
    env = {"PATH": "/usr/bin:/bin", "MINIFLOW_DATABASE_URL": db, "MINIFLOW_DATA_KEY_FILE": str(keyfile)}
    done = subprocess.run([str(MINIFLOW), "keys", "rotate-data-key"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 run(s)" in done.stdout
    with EmbeddedEngine(db, threads=1, keys=KeyRing.parse(new, "test")) as engine, engine.db.connect() as conn:
        row = repo.get_run(conn, run_id)
    assert row is not None and row.params["token"].startswith("mfenc:v1:new:")
    assert KeyRing.parse(new, "test").open(row.params["token"], "token") == "rotate-me-please"


def test_a_rejected_step_message_is_archived_with_its_secret_params_masked(engine: EmbeddedEngine) -> None:
    forged = envelope(engine.names.ingress, EXECUTE_STEP, {"v": 1, "run_id": "r", "workflow": "w", "step": "s",
                                                           "attempt": 1, "task": "t",
                                                           "params": {"token": "archived-secret-42"},
                                                           "secret_params": ["token"]})
    from miniflow.protocol import codec

    engine.broker.put_raw(engine.names.ingress, codec.pack(forged))

    def archived() -> list[bytes] | None:
        engine.settle()
        with engine.db.connect() as conn:
            rows = repo.list_dead_letters(conn)
        return [r.raw for r in rows] or None

    raws = poll_until(archived, timeout=30, what="the rejected message in the archive")
    assert b"archived-secret-42" not in raws[0] and b"***" in raws[0]
