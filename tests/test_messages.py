"""protocol/messages.py and protocol/names.py: the envelope, the payload types and the queue names."""

from __future__ import annotations

from typing import Any

import pytest

from miniflow.protocol import codec
from miniflow.protocol import envelope as e
from miniflow.protocol import messages as m
from miniflow.protocol.bounds import MAX_KEY_LEN
from miniflow.protocol.codes import Reason
from miniflow.protocol.envelope import check_envelope, payload_of
from miniflow.protocol.errors import MessageRejected
from miniflow.protocol.messages import (
    CancelRun,
    DeadLetterReport,
    Payload,
    StartWorkflow,
    StepFinished,
    StepResult,
    StepTask,
)
from miniflow.protocol.names import QueueNames

SECRET = "sk_live_51HxQ_secret_token"


def an_envelope(**changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "queue_name": "miniflow.ingress",
        "actor_name": "start_workflow",
        "args": [{"v": 1, "workflow": "diamond"}],
        "kwargs": {},
        "options": {},
        "message_id": "0b7c6f5e-7d0c-4a57-8a1a-7f3d2c1e9b10",
        "message_timestamp": 1_764_150_000_000,
    }
    env.update(changes)
    return env


def rejected(cls: type[Payload], payload: Any) -> MessageRejected:
    with pytest.raises(MessageRejected) as info:
        cls.from_payload(payload)
    return info.value


T0 = 1_764_000_000  # 2025-11-24, a timestamp in the sane range results must carry


def a_step_result(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"v": 1, "run_id": "r1", "step": "load", "attempt": 1, "ok": True,
                               "started_at": T0 + 1.5, "finished_at": T0 + 2.5}
    payload.update(changes)
    return payload


# -- the envelope --------------------------------------------------------------------------------
def test_a_complete_envelope_passes() -> None:
    check_envelope(an_envelope())


def test_the_envelope_helper_builds_an_envelope_that_passes_the_check() -> None:
    env = e.envelope("miniflow.ingress", "start_workflow", {"v": 1, "workflow": "w"}, message_id="id-1")
    check_envelope(env)
    assert env["args"] == [{"v": 1, "workflow": "w"}]
    assert env["message_id"] == "id-1"


@pytest.mark.parametrize("key", sorted(e.ENVELOPE_FIELDS))
def test_an_envelope_without_a_field_is_rejected_naming_it(key: str) -> None:
    env = an_envelope()
    del env[key]
    with pytest.raises(MessageRejected) as info:
        check_envelope(env)
    assert info.value.code == Reason.ENVELOPE_MISSING_FIELD
    assert info.value.field == key


@pytest.mark.parametrize("key, bad", [
    ("queue_name", 1), ("actor_name", b"start_workflow"), ("args", {"v": 1}), ("kwargs", []),
    ("options", "x"), ("message_id", 12), ("message_timestamp", "1764150000000"),
    ("message_timestamp", True), ("message_timestamp", 1.5), ("args", None),
])
def test_an_envelope_field_of_the_wrong_type_is_rejected_naming_it(key: str, bad: Any) -> None:
    with pytest.raises(MessageRejected) as info:
        check_envelope(an_envelope(**{key: bad}))
    assert info.value.code == Reason.ENVELOPE_BAD_TYPE
    assert info.value.field == key


def test_an_envelope_with_an_extra_field_is_rejected_naming_it() -> None:
    with pytest.raises(MessageRejected) as info:
        check_envelope(an_envelope(zzz=1, eta=2))
    assert info.value.code == Reason.ENVELOPE_EXTRA_FIELD
    assert info.value.field == "eta"


@pytest.mark.parametrize("message_id", ["", "x" * 193], ids=["empty", "193-chars"])
def test_a_message_id_outside_1_to_192_characters_is_rejected(message_id: str) -> None:
    with pytest.raises(MessageRejected) as info:
        check_envelope(an_envelope(message_id=message_id))
    assert info.value.field == "message_id"


def test_a_message_id_of_192_characters_is_accepted() -> None:
    check_envelope(an_envelope(message_id="x" * 192))


def test_an_envelope_rejection_does_not_echo_the_value() -> None:
    with pytest.raises(MessageRejected) as info:
        check_envelope(an_envelope(message_id=[SECRET]))
    assert SECRET not in str(info.value)


# -- payload_of ----------------------------------------------------------------------------------
def test_payload_of_returns_the_single_payload_map() -> None:
    assert payload_of([{"v": 1}], {}) == {"v": 1}
    assert payload_of(({"v": 1},), {}) == {"v": 1}


def test_payload_of_refuses_kwargs() -> None:
    with pytest.raises(MessageRejected) as info:
        payload_of([{"v": 1}], {"workflow": SECRET})
    assert (info.value.code, info.value.field) == (Reason.BAD_ARGS, "kwargs")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("args", [[], [{"v": 1}, {"v": 1}], ["start"], [[{"v": 1}]], {"v": 1}, None, "x"])
def test_payload_of_refuses_args_that_are_not_exactly_one_map(args: Any) -> None:
    with pytest.raises(MessageRejected) as info:
        payload_of(args, {})
    assert (info.value.code, info.value.field) == (Reason.BAD_ARGS, "args")


# -- start_workflow ------------------------------------------------------------------------------
def test_a_minimal_start_gets_the_defaults() -> None:
    start = StartWorkflow.from_payload({"v": 1, "workflow": "csv-report"})
    assert start == StartWorkflow(workflow="csv-report", version=None, params={}, idempotency_key=None,
                                  priority=0)


def test_a_full_start_keeps_every_field() -> None:
    start = StartWorkflow.from_payload({"v": 1, "workflow": "csv.report_2", "version": 3,
                                        "params": {"x": 3}, "idempotency_key": "k" * MAX_KEY_LEN,
                                        "priority": 9})
    assert start.version == 3
    assert start.params == {"x": 3}
    assert start.idempotency_key == "k" * MAX_KEY_LEN
    assert start.priority == 9
    assert StartWorkflow.from_payload(start.to_payload()) == start


@pytest.mark.parametrize("name", ["version", "params", "idempotency_key", "priority"])
def test_none_for_an_optional_field_means_the_default(name: str) -> None:
    start = StartWorkflow.from_payload({"v": 1, "workflow": "w", name: None})
    assert start == StartWorkflow(workflow="w")


def test_the_defaults_are_not_shared_between_starts() -> None:
    one = StartWorkflow.from_payload({"v": 1, "workflow": "w"})
    two = StartWorkflow.from_payload({"v": 1, "workflow": "w"})
    assert one.params is not two.params


def test_a_start_without_a_version_marker_is_rejected() -> None:
    err = rejected(StartWorkflow, {"workflow": "w"})
    assert (err.code, err.field) == (Reason.MISSING_FIELD, "v")


@pytest.mark.parametrize("v", [2, 0, -1, True, "1"])
def test_a_start_of_an_unsupported_protocol_version_is_rejected(v: Any) -> None:
    err = rejected(StartWorkflow, {"v": v, "workflow": "w"})
    assert (err.code, err.field) == (Reason.UNSUPPORTED_VERSION, "v")


def test_a_nil_version_marker_is_rejected_as_missing() -> None:
    err = rejected(StartWorkflow, {"v": None, "workflow": "w"})
    assert (err.code, err.field) == (Reason.MISSING_FIELD, "v")


def test_a_float_version_marker_is_not_accepted() -> None:
    err = rejected(StartWorkflow, {"v": 1.0, "workflow": "w"})
    assert err.field == "v"
    assert err.code in {Reason.UNSUPPORTED_VERSION, Reason.BAD_TYPE}


def test_an_unsupported_version_rejection_does_not_echo_the_value() -> None:
    err = rejected(StartWorkflow, {"v": SECRET, "workflow": "w"})
    assert err.code == Reason.UNSUPPORTED_VERSION
    assert SECRET not in str(err)


@pytest.mark.parametrize("v", [[1], {"major": 1}], ids=["array", "map"])
def test_an_unhashable_version_marker_is_rejected_not_crashed(v: Any) -> None:
    err = rejected(StartWorkflow, {"v": v, "workflow": "w"})
    assert (err.code, err.field) == (Reason.UNSUPPORTED_VERSION, "v")


def test_a_start_without_a_workflow_is_rejected() -> None:
    for payload in ({"v": 1}, {"v": 1, "workflow": None}):
        err = rejected(StartWorkflow, payload)
        assert (err.code, err.field) == (Reason.MISSING_FIELD, "workflow")


@pytest.mark.parametrize("name, value", [
    ("workflow", 7), ("workflow", True), ("version", "1"), ("version", True), ("version", 1.0),
    ("params", [1, 2]), ("idempotency_key", 5), ("priority", "9"), ("priority", True), ("priority", 1.5),
])
def test_a_start_field_of_the_wrong_type_is_rejected_naming_it(name: str, value: Any) -> None:
    payload = {"v": 1, "workflow": "w", name: value}
    err = rejected(StartWorkflow, payload)
    assert (err.code, err.field) == (Reason.BAD_TYPE, name)


def test_a_start_with_an_unknown_field_is_rejected_naming_it() -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "parmas": {}})
    assert (err.code, err.field) == (Reason.UNKNOWN_FIELD, "parmas")


@pytest.mark.parametrize("workflow", ["", "-leading-dash", "has space", "a/b", "x" * 129, "caf\u00e9",
                                      SECRET + "!", "diamond\n"])
def test_a_start_with_a_bad_workflow_name_is_rejected_without_echoing_it(workflow: str) -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": workflow})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "workflow")
    if workflow:
        assert workflow not in str(err)


@pytest.mark.parametrize("priority", [-1, 10, 2**40])
def test_a_priority_outside_0_to_9_is_rejected(priority: int) -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "priority": priority})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "priority")


@pytest.mark.parametrize("priority", [0, 9])
def test_priorities_0_and_9_are_accepted(priority: int) -> None:
    assert StartWorkflow.from_payload({"v": 1, "workflow": "w", "priority": priority}).priority == priority


@pytest.mark.parametrize("key", ["", SECRET * 20])
def test_an_idempotency_key_that_is_empty_or_too_long_is_rejected_without_echoing_it(key: str) -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "idempotency_key": key})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "idempotency_key")
    if key:
        assert SECRET not in str(err)


def test_an_idempotency_key_in_the_reserved_message_prefix_is_rejected() -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "idempotency_key": "message:1234"})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "idempotency_key")


@pytest.mark.parametrize("params", [{"blob": b"\x00\x01"}, {"name": "a\x00b"}, {"deep": [{"k": b"x"}]}],
                         ids=["bin", "nul", "nested-bin"])
def test_params_that_are_not_json_compatible_are_rejected(params: dict[str, Any]) -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "params": params})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "params")


def test_a_params_key_with_a_nul_character_is_rejected() -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "params": {"a\x00b": 1}})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "params")


@pytest.mark.parametrize("version", [0, -1])
def test_a_workflow_version_below_1_is_rejected(version: int) -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "version": version})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "version")


def test_a_wrongly_typed_secret_is_not_echoed() -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "idempotency_key": [SECRET]})
    assert err.code == Reason.BAD_TYPE
    assert SECRET not in str(err)


def test_a_payload_that_is_not_a_map_is_rejected() -> None:
    err = rejected(StartWorkflow, [{"v": 1, "workflow": "w"}])
    assert (err.code, err.field) == (Reason.BAD_ARGS, "args")


def test_a_start_survives_the_wire() -> None:
    start = StartWorkflow(workflow="diamond", params={"x": 3, "when": "2026-01-01"}, idempotency_key="k1")
    body = codec.pack(e.envelope("miniflow.ingress", "start_workflow", start.to_payload()))
    env = codec.unpack(body)
    check_envelope(env)
    assert StartWorkflow.from_payload(payload_of(env["args"], env["kwargs"])) == start


# -- cancel_run ----------------------------------------------------------------------------------
def test_a_cancel_defaults_to_an_empty_reason() -> None:
    assert CancelRun.from_payload({"v": 1, "run_id": "r1"}) == CancelRun(run_id="r1", reason="")


def test_a_cancel_keeps_its_reason_and_round_trips() -> None:
    cancel = CancelRun(run_id="r1", reason="operator asked")
    assert cancel.to_payload() == {"v": 1, "run_id": "r1", "reason": "operator asked"}
    assert CancelRun.from_payload(cancel.to_payload()) == cancel


def test_a_cancel_without_a_run_id_is_rejected() -> None:
    err = rejected(CancelRun, {"v": 1, "reason": "x"})
    assert (err.code, err.field) == (Reason.MISSING_FIELD, "run_id")


# -- execute_step and record_result --------------------------------------------------------------
def test_a_step_task_round_trips_and_has_a_stable_idempotency_key() -> None:
    task = StepTask(run_id="r1", workflow="diamond", step="b", attempt=2, task="diamond.double",
                    params={"x": 3}, config={"k": [1, 2]}, inputs={"a": 3}, timeout_s=30.0)
    payload = task.to_payload()
    assert payload["v"] == m.PROTOCOL_VERSION
    again = StepTask.from_payload(payload)
    assert again == task
    assert again.idempotency_key == "r1:b:2"


def test_a_step_task_takes_an_integer_timeout_as_seconds() -> None:
    task = StepTask.from_payload({"v": 1, "run_id": "r1", "workflow": "w", "step": "a", "attempt": 1,
                                  "task": "t", "timeout_s": 30})
    assert task.timeout_s == 30.0
    assert isinstance(task.timeout_s, float)
    assert (task.params, task.config, task.inputs) == ({}, {}, {})


def test_a_step_task_without_an_attempt_is_rejected() -> None:
    err = rejected(StepTask, {"v": 1, "run_id": "r1", "workflow": "w", "step": "a", "task": "t"})
    assert (err.code, err.field) == (Reason.MISSING_FIELD, "attempt")


@pytest.mark.parametrize("output", [None, [1, "two", None], 42, 1.5, "text", True, {"rows": 3}])
def test_a_step_result_may_carry_any_plain_output(output: Any) -> None:
    result = StepResult.from_payload(a_step_result(output=output))
    assert result.output == output
    assert StepResult.from_payload(result.to_payload()) == result


def test_a_failed_step_result_round_trips_with_its_error() -> None:
    result = StepResult(run_id="r1", step="load", attempt=3, ok=False, started_at=T0 + 1.0, finished_at=T0 + 2.0,
                        error="boom", error_type="ValueError", node="node-1")
    assert StepResult.from_payload(result.to_payload()) == result
    assert StepResult.from_payload(codec.unpack(codec.pack(result.to_payload()))) == result


def test_a_step_result_takes_integer_timestamps() -> None:
    result = StepResult.from_payload(a_step_result(started_at=T0 + 1, finished_at=T0 + 2))
    assert (result.started_at, result.finished_at) == (T0 + 1.0, T0 + 2.0)
    assert isinstance(result.started_at, float)


@pytest.mark.parametrize("name, value", [("ok", 1), ("ok", "true"), ("attempt", True), ("attempt", 1.0),
                                         ("started_at", True), ("started_at", "1.5"), ("error", 5)])
def test_a_step_result_field_of_the_wrong_type_is_rejected_naming_it(name: str, value: Any) -> None:
    err = rejected(StepResult, a_step_result(**{name: value}))
    assert (err.code, err.field) == (Reason.BAD_TYPE, name)


def test_a_step_result_without_ok_is_rejected() -> None:
    payload = a_step_result()
    del payload["ok"]
    err = rejected(StepResult, payload)
    assert (err.code, err.field) == (Reason.MISSING_FIELD, "ok")


def test_step_finished_round_trips() -> None:
    finished = StepFinished(run_id="r1", step="d", attempt=1)
    assert StepFinished.from_payload(finished.to_payload()) == finished


# -- record_dead_letter --------------------------------------------------------------------------
def test_a_dead_letter_report_keeps_raw_bytes_across_the_wire() -> None:
    report = DeadLetterReport(queue="miniflow.ingress", code="malformed", detail="not msgpack",
                              message_id=None, actor=None, raw=b"\xc1\x00\xff", node="node-1")
    again = DeadLetterReport.from_payload(codec.unpack(codec.pack(report.to_payload())))
    assert again == report
    assert isinstance(again.raw, bytes)


def test_a_dead_letter_report_defaults_raw_to_empty_bytes() -> None:
    report = DeadLetterReport.from_payload({"v": 1, "queue": "q", "code": "c", "detail": "d"})
    assert report.raw == b""
    assert report.node == ""


def test_a_dead_letter_report_with_text_as_raw_is_rejected() -> None:
    err = rejected(DeadLetterReport, {"v": 1, "queue": "q", "code": "c", "detail": "d", "raw": "\u00ff"})
    assert (err.code, err.field) == (Reason.BAD_TYPE, "raw")


# -- queue names ---------------------------------------------------------------------------------
def test_the_default_namespace_names_every_queue() -> None:
    names = QueueNames()
    assert names.ingress == "miniflow.ingress"
    assert names.coordinator == "miniflow.coordinator"
    assert names.results == "miniflow.results"
    assert names.steps == "miniflow.steps"


def test_a_namespace_prefixes_every_queue() -> None:
    names = QueueNames("test_run-7")
    assert {names.ingress, names.coordinator, names.results, names.steps} == {
        "test_run-7.ingress", "test_run-7.coordinator", "test_run-7.results", "test_run-7.steps"}


def test_a_step_pool_has_its_own_queue_and_none_is_the_default_pool() -> None:
    names = QueueNames()
    assert names.step_queue() == "miniflow.steps"
    assert names.step_queue(None) == "miniflow.steps"
    assert names.step_queue("gpu") == "miniflow.steps.gpu"


def test_ingress_allows_start_cancel_and_retry_but_not_execute_step() -> None:
    names = QueueNames()
    allowed = names.allowed_actors("miniflow.ingress")
    assert allowed == {"start_workflow", "cancel_run", "retry_run"}
    assert "execute_step" not in allowed
    assert names.allowed_actors("miniflow.ingress.DQ") == allowed


@pytest.mark.parametrize("queue, actors", [
    ("miniflow.coordinator", {"step_finished", "step_progress"}),
    ("miniflow.coordinator.DQ", {"step_finished", "step_progress"}),
    ("miniflow.results", {"record_result", "record_dead_letter", "worker_heartbeat"}),
    ("miniflow.results.DQ", {"record_result", "record_dead_letter", "worker_heartbeat"}),
    ("miniflow.steps", {"execute_step"}),
    ("miniflow.steps.DQ", {"execute_step"}),
    ("miniflow.steps.gpu", {"execute_step"}),
    ("miniflow.steps.gpu.DQ", {"execute_step"}),
])
def test_each_queue_allows_only_its_own_actors(queue: str, actors: set[str]) -> None:
    assert QueueNames().allowed_actors(queue) == actors


@pytest.mark.parametrize("queue", ["other.ingress", "miniflow.stepsx", "miniflow", "", "miniflow.ingress.XQ",
                                   "tenant.steps"])
def test_a_foreign_queue_allows_no_actor(queue: str) -> None:
    assert QueueNames().allowed_actors(queue) == frozenset()


def test_a_queue_of_another_namespace_allows_nothing() -> None:
    assert QueueNames("a").allowed_actors("b.ingress") == frozenset()


@pytest.mark.parametrize("namespace", ["", "has.dot", "1starts-with-digit", "has space", "x" * 65,
                                       "caf\u00e9"])
def test_a_bad_namespace_raises_value_error(namespace: str) -> None:
    with pytest.raises(ValueError):
        QueueNames(namespace)


@pytest.mark.parametrize("pool", ["has.dot", "has space", "x" * 65, "a/b"])
def test_a_bad_pool_raises_value_error(pool: str) -> None:
    with pytest.raises(ValueError):
        QueueNames().step_queue(pool)


@pytest.mark.parametrize("namespace, pool", [("miniflow\n", None), ("miniflow", "gpu\n")],
                         ids=["namespace", "pool"])
def test_a_name_with_a_trailing_newline_raises_value_error(namespace: str, pool: str | None) -> None:
    with pytest.raises(ValueError):
        QueueNames(namespace).step_queue(pool)


# -- bounded fields: what the checks accept fits the columns and the computations -------------------
@pytest.mark.parametrize("changes, field", [
    ({"started_at": 1e300}, "started_at"), ({"finished_at": -5.0}, "finished_at"),
    ({"attempt": 2**31}, "attempt"), ({"attempt": 0}, "attempt"), ({"run_id": "r" * 37}, "run_id"),
    ({"step": "s" * 129}, "step"), ({"node": "n" * 256}, "node"), ({"error": "e" * 4001}, "error"),
    ({"error_type": "t" * 256}, "error_type"), ({"traceback": "x" * 16001}, "traceback"),
])
def test_a_step_result_out_of_the_bounds_of_its_columns_is_rejected_naming_the_field(changes, field) -> None:
    err = rejected(StepResult, a_step_result(**changes))
    assert (err.code, err.field) == (Reason.BAD_VALUE, field)


def test_secret_params_must_be_a_list_of_names() -> None:
    task = {"v": 1, "run_id": "r", "workflow": "w", "step": "s", "attempt": 1, "task": "t"}
    err = rejected(m.StepTask, dict(task, secret_params=["ok", 5]))
    assert (err.code, err.field) == (Reason.BAD_VALUE, "secret_params")
    assert m.StepTask.from_payload(dict(task, secret_params=["token"])).secret_params == ["token"]


def test_a_start_version_above_int4_is_rejected() -> None:
    err = rejected(StartWorkflow, {"v": 1, "workflow": "w", "version": 2**31})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "version")


def test_a_cancel_with_a_run_id_longer_than_a_uuid_is_rejected() -> None:
    err = rejected(m.CancelRun, {"v": 1, "run_id": "x" * 37})
    assert (err.code, err.field) == (Reason.BAD_VALUE, "run_id")
