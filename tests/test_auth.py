"""Message authentication (protocol/auth.py): signatures, roles, capabilities, keys in the database."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from miniflow.coordinator import loads
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.persistence.keys import (
    DatabaseKeys,
    activate_core_key,
    add_core_key,
    create_client_key,
    reseal_keys,
    retire_core_key,
)
from miniflow.persistence.repository import keys as krepo
from miniflow.persistence.sealing import KeyRing, new_key_line
from miniflow.protocol import codec
from miniflow.protocol.auth import (
    ADMIN,
    EXECUTOR,
    OPERATOR,
    PRODUCER,
    SIG_OPTION,
    Capabilities,
    ClientKey,
    CoreKey,
    StaticKeys,
    Verifier,
    canonical_of,
    new_token,
)
from miniflow.protocol.clock import utcnow
from miniflow.protocol.codes import Reason
from miniflow.protocol.envelope import envelope
from miniflow.protocol.errors import ConfigError, MessageRejected
from miniflow.protocol.messages import CancelRun, StartWorkflow, StepFinished, StepResult, StepTask
from miniflow.protocol.names import (
    CANCEL_RUN,
    EXECUTE_STEP,
    RECORD_RESULT,
    RETRY_RUN,
    START_WORKFLOW,
    STEP_FINISHED,
)

from .forge import sign

CORE_KEY = CoreKey.generate()
EXEC = ClientKey.from_token(new_token(), EXECUTOR)
PROD = ClientKey.from_token(new_token(), PRODUCER)
OPER = ClientKey.from_token(new_token(), OPERATOR)
KEYS = StaticKeys(core=[CORE_KEY], clients=[EXEC, PROD, OPER])
TASK = StepTask(run_id="r" * 36, workflow="w", step="s", attempt=1, task="t", params={"n": 1.5, "b": b"\x00"},
                inputs={"x": [1, {"y": None}]}, timeout_s=3.0)


def step_message(**options: Any) -> dict[str, Any]:
    return envelope("miniflow.steps", EXECUTE_STEP, TASK.to_payload(), options={"time_limit": 3000, **options})


def wire(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields as a consumer decodes them."""
    return codec.unpack(codec.pack(fields))


def code_of(fields: dict[str, Any], *, signed_starts: bool = False, headers: dict[str, Any] | None = None,
            body: bytes = b"") -> str | None:
    try:
        Verifier(KEYS, signed_starts=signed_starts).check(fields, headers, body)
    except MessageRejected as exc:
        return exc.code
    return None


def test_a_core_signature_verifies_after_the_wire_and_survives_what_dramatiq_changes() -> None:
    signed = wire(sign(step_message(), CORE_KEY))
    assert code_of(signed) is None
    moved = {**signed, "queue_name": "miniflow.steps.DQ",
             "options": {**signed["options"], "eta": 1, "retries": 3, "traceback": "x", "declines": 2}}
    assert code_of(wire(moved)) is None


@pytest.mark.parametrize("change", [
    {"actor_name": "record_result"}, {"queue_name": "miniflow.steps.other"}, {"message_id": "another"},
    {"message_timestamp": 1}, {"args": [{**TASK.to_payload(), "task": "other.task"}]},
    {"args": [{**TASK.to_payload(), "attempt": 2}]}, {"options": {"time_limit": 999_999}},
])
def test_changing_what_a_signature_covers_breaks_it(change: dict[str, Any]) -> None:
    signed = sign(step_message(), CORE_KEY)
    tampered = {**signed, **change}
    tampered["options"] = {**signed["options"], **change.get("options", {}), SIG_OPTION: signed["options"][SIG_OPTION]}
    assert code_of(wire(tampered)) == Reason.BAD_SIGNATURE


def test_who_may_send_what() -> None:
    def signed_by(actor: str, queue: str, payload: dict[str, Any], key: CoreKey | ClientKey) -> str | None:
        return code_of(wire(sign(envelope(queue, actor, payload), key)))

    cancel = CancelRun(run_id="r" * 36).to_payload()
    start = StartWorkflow(workflow="w").to_payload()
    assert signed_by(EXECUTE_STEP, "miniflow.steps", TASK.to_payload(), EXEC) == Reason.KEY_NOT_ALLOWED
    assert signed_by(CANCEL_RUN, "miniflow.ingress", cancel, PROD) == Reason.KEY_NOT_ALLOWED
    assert signed_by(CANCEL_RUN, "miniflow.ingress", cancel, OPER) is None
    assert signed_by(RETRY_RUN, "miniflow.ingress", cancel, CORE_KEY) is None
    assert signed_by(STEP_FINISHED, "miniflow.coordinator", StepFinished("r", "s", 1).to_payload(), EXEC) \
        == Reason.KEY_NOT_ALLOWED
    assert signed_by(START_WORKFLOW, "miniflow.ingress", start, PROD) is None
    assert code_of(wire(envelope("miniflow.ingress", START_WORKFLOW, start))) is None  # open by default
    assert code_of(wire(envelope("miniflow.ingress", START_WORKFLOW, start)), signed_starts=True) == Reason.UNSIGNED
    assert code_of(wire(envelope("miniflow.ingress", CANCEL_RUN, cancel))) == Reason.UNSIGNED
    stranger = ClientKey.from_token(new_token(), ADMIN)
    assert signed_by(CANCEL_RUN, "miniflow.ingress", cancel, stranger) == Reason.UNKNOWN_KEY
    assert signed_by(EXECUTE_STEP, "miniflow.steps", TASK.to_payload(), CoreKey.generate()) == Reason.UNKNOWN_KEY


def test_a_producer_in_any_language_signs_the_exact_body_in_headers() -> None:
    fields = envelope("miniflow.ingress", CANCEL_RUN, CancelRun(run_id="r" * 36).to_payload())
    body = codec.pack(fields)
    assert code_of(wire(fields), headers=OPER.headers(body), body=body) is None
    assert code_of(wire(fields), headers=PROD.headers(body), body=body) == Reason.KEY_NOT_ALLOWED
    other = codec.pack({**fields, "message_id": "x"})
    assert code_of(wire(fields), headers=OPER.headers(other), body=body) == Reason.BAD_SIGNATURE
    assert code_of(wire(fields), headers={"x-miniflow-key": OPER.kid}, body=body) == Reason.BAD_SIGNATURE


def test_a_capability_is_good_for_its_own_attempt_only() -> None:
    caps = Capabilities(KEYS)
    cap = caps.issue("run", "step", 2)
    caps.check(cap, "run", "step", 2)
    for other in (("run", "step", 3), ("run", "other", 2), ("other", "step", 2)):
        with pytest.raises(MessageRejected) as info:
            caps.check(cap, *other)
        assert info.value.code == Reason.BAD_CAPABILITY
    with pytest.raises(MessageRejected):
        caps.check(None, "run", "step", 2)
    elsewhere = Capabilities(StaticKeys(core=[CoreKey.generate()])).issue("run", "step", 2)
    with pytest.raises(MessageRejected):
        caps.check(elsewhere, "run", "step", 2)


def test_a_malformed_key_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as info:
        ClientKey.from_token("mf_abc_supersecretvalue")
    assert "supersecret" not in str(info.value)


# -- keys in the database --------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    database.upgrade()
    return database


RING_LINE = new_key_line("one")
RING = KeyRing.parse(RING_LINE, "test")


def test_the_core_key_rotates_without_a_gap(db: Database) -> None:
    with db.transaction() as conn:
        first = add_core_key(conn, RING, first=True)
    keys = DatabaseKeys(db, RING, refresh_s=0)
    assert keys.require_signer().kid == first.kid
    with db.transaction() as conn:
        second = add_core_key(conn, RING)
    keys.refresh()
    assert keys.require_signer().kid == first.kid  # "next" verifies but does not sign
    assert keys.core_public(second.kid) is not None
    with db.transaction() as conn:
        assert activate_core_key(conn, second.kid) == first.kid
    keys.refresh()
    assert keys.require_signer().kid == second.kid
    old = sign(step_message(), first)
    assert Verifier(keys).check(wire(old)) is not None  # still accepted
    with db.transaction() as conn:
        retire_core_key(conn, first.kid)
        with pytest.raises(ConfigError):
            retire_core_key(conn, second.kid)  # the signing one
    keys.refresh()
    with pytest.raises(MessageRejected) as info:
        Verifier(keys).check(wire(old))
    assert info.value.code == Reason.UNKNOWN_KEY


def test_client_keys_are_revoked_and_expire(db: Database) -> None:
    with db.transaction() as conn:
        add_core_key(conn, RING, first=True)
        token, row = create_client_key(conn, RING, "ci", OPERATOR)
        late, gone = create_client_key(conn, RING, "old", OPERATOR, expires_at=utcnow() - timedelta(seconds=1))
        with pytest.raises(ConfigError):
            create_client_key(conn, RING, "ci", OPERATOR)  # names are unique
    with db.connect() as conn:
        columns = [tuple(r) for r in conn.exec_driver_sql("select * from api_keys")]
        stored = repr(krepo.list_api_keys(conn)) + repr(columns)
    assert token not in stored and late not in stored
    keys = DatabaseKeys(db, RING, refresh_s=0)
    assert keys.client(row.kid) == ClientKey.from_token(token, OPERATOR)
    assert keys.client(gone.kid) is None  # expired
    with db.transaction() as conn:
        assert krepo.revoke_api_key(conn, row.kid, utcnow())
    keys.refresh()
    assert keys.client(row.kid) is None


def test_a_data_key_rotation_reseals_the_keys(db: Database) -> None:
    with db.transaction() as conn:
        core = add_core_key(conn, RING, first=True)
        token, row = create_client_key(conn, RING, "ci", OPERATOR)
    new_line = new_key_line("two")
    with db.transaction() as conn:
        assert reseal_keys(conn, KeyRing.parse(f"{new_line}\n{RING_LINE}", "test")) == 2
        assert reseal_keys(conn, KeyRing.parse(f"{new_line}\n{RING_LINE}", "test")) == 0
    keys = DatabaseKeys(db, KeyRing.parse(new_line, "test"))  # the old data key is gone
    assert keys.require_signer().kid == core.kid
    assert keys.client(row.kid) == ClientKey.from_token(token, OPERATOR)


def test_a_core_process_without_a_core_key_says_how_to_make_one(db: Database) -> None:
    with pytest.raises(ConfigError, match="keys core init"):
        DatabaseKeys(db, RING).require_signer()
    with pytest.raises(ConfigError, match="MINIFLOW_DATA_KEY"):
        DatabaseKeys(db, None)


# -- the embedded engine, with authentication on ---------------------------------------------------
ECHO = "name: echo\nsteps:\n  - {name: a, task: test.echo}\n"


def archived(engine: EmbeddedEngine, count: int) -> list[str]:
    def codes() -> list[str] | None:
        engine.settle()
        with engine.db.connect() as conn:
            found = [r.code for r in repo.list_dead_letters(conn, 100)]
        return found if len(found) >= count else None

    return poll_until(codes, timeout=30, what=f"{count} rejection(s) archived")


def test_forged_internal_messages_have_no_effect_and_are_archived(engine: EmbeddedEngine) -> None:
    engine.deploy(loads(ECHO))
    run = engine.wait(engine.submit("echo"), timeout=30)
    started: list[Any] = []
    engine.on_event = lambda kind, data: started.append(data) if kind == "step_started" else None
    now = time.time()
    forged_result = StepResult(run_id=run.run_id, step="a", attempt=2, ok=True, started_at=now, finished_at=now,
                               output="forged").to_payload()
    forged_task = StepTask(run_id=run.run_id, workflow="echo", step="a", attempt=9, task="test.echo").to_payload()
    finished = StepFinished(run.run_id, "a", 2).to_payload()
    for queue, actor, payload in ((engine.names.results, RECORD_RESULT, forged_result),
                                  (engine.names.steps, EXECUTE_STEP, forged_task),
                                  (engine.names.coordinator, STEP_FINISHED, finished),
                                  (engine.names.ingress, CANCEL_RUN, CancelRun(run_id=run.run_id).to_payload())):
        engine.broker.put_raw(queue, codec.pack(envelope(queue, actor, payload)))
    assert archived(engine, 4) == [Reason.UNSIGNED] * 4
    with engine.db.connect() as conn:
        attempts = repo.get_attempts(conn, run.run_id)
    assert [(a.attempt, a.output) for a in attempts] == [(1, run.attempts[0].output)]
    assert started == []


def test_a_result_signed_by_a_node_but_for_an_attempt_it_was_not_given_is_refused(engine: EmbeddedEngine) -> None:
    engine.deploy(loads(ECHO))
    run = engine.wait(engine.submit("echo"), timeout=30)
    assert engine.auth is not None
    caps = Capabilities(engine.auth)
    now = time.time()
    forged = StepResult(run_id=run.run_id, step="a", attempt=2, ok=True, started_at=now, finished_at=now,
                        output="forged", cap=caps.issue(run.run_id, "a", 1)).to_payload()
    signer = engine.auth.core_signer() if engine.auth else None
    assert signer is not None
    engine.broker.put_raw(engine.names.results,
                          codec.pack(sign(envelope(engine.names.results, RECORD_RESULT, forged), signer)))
    assert archived(engine, 1) == [Reason.BAD_CAPABILITY]
    with engine.db.connect() as conn:
        assert len(repo.get_attempts(conn, run.run_id)) == 1


def test_with_authentication_off_the_engine_runs_as_before(tmp_path) -> None:
    with EmbeddedEngine(f"sqlite:///{tmp_path / 'open.db'}", threads=2, auth=False) as engine:
        engine.deploy(loads(ECHO))
        assert engine.wait(engine.submit("echo"), timeout=30).status == "succeeded"
        assert engine.auth is None


def test_the_core_mac_is_accepted_by_core_processes_only() -> None:
    fields = envelope("miniflow.coordinator", STEP_FINISHED, StepFinished("r" * 36, "s", 1).to_payload())
    fields["options"][SIG_OPTION] = CORE_KEY.mac(canonical_of(fields))
    assert code_of(wire(fields)) is None
    executor_view = StaticKeys(public={CORE_KEY.kid: CORE_KEY.public})
    with pytest.raises(MessageRejected) as info:
        Verifier(executor_view).check(wire(fields))
    assert info.value.code == Reason.UNKNOWN_KEY
    fields["options"][SIG_OPTION] = CoreKey.from_seed(CORE_KEY.kid, b"\x01" * 32).mac(canonical_of(fields))
    assert code_of(wire(fields)) == Reason.BAD_SIGNATURE
