"""Attacks by a party that may publish to the vhost but holds no MiniFlow key (or only a lesser
one), against separate worker processes on the real RabbitMQ and Postgres: each has no effect and
is archived with its reason, and the workers keep serving."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from miniflow.protocol import codec
from miniflow.protocol.auth import ClientKey
from miniflow.protocol.envelope import envelope
from miniflow.protocol.messages import CancelRun, DeadLetterReport, RetryRun, StepFinished, StepResult, StepTask

from ..forge import sign
from .conftest import BROKER_URL, executor_token, miniflow, poll, query
from .raw_producer import publish_raw, publish_start


@pytest.fixture
def done_run(cluster: dict[str, str]) -> dict[str, Any]:
    """A diamond run that succeeded: the target of the attacks."""
    result = miniflow(cluster, "start", "diamond", "-p", "x=2", "--wait", "--timeout", "60", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def rejections(db: str, message_ids: list[str]) -> dict[str, str]:
    """The archived code of each message id, once all of them are archived."""
    def all_there() -> dict[str, str] | None:
        rows = dict(query(db, "select message_id, code from dead_letters where message_id = any(%s)", message_ids))
        return rows if len(rows) == len(message_ids) else None

    return poll(all_there, timeout=60, what=f"{len(message_ids)} rejection(s) archived")  # type: ignore[no-any-return]


def attempts(db: str, run_id: str) -> list[tuple[str, int, str]]:
    return query(db, "select step, attempt, output::text from step_attempts where run_id = %s order by step, attempt",
                 run_id)


def publish(cluster: dict[str, str], queue: str, actor: str, payload: dict[str, Any],
            signer: ClientKey | None = None, headers: dict[str, str] | None = None) -> str:
    fields = envelope(f"{cluster['MINIFLOW_NAMESPACE']}.{queue}", actor, payload)
    body = codec.pack(sign(fields, signer) if signer is not None else fields)
    publish_raw(BROKER_URL, fields["queue_name"], body, headers)
    return str(fields["message_id"])


def probe(cluster: dict[str, str]) -> None:
    """A start right after: every worker thread still serves."""
    result = miniflow(cluster, "start", "diamond", "-p", "x=1", "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stderr + result.stdout


def test_forged_internal_messages_without_a_key_change_nothing_and_are_archived(cluster, done_run) -> None:
    db, run_id = cluster["MINIFLOW_DATABASE_URL"], done_run["id"]
    before = attempts(db, run_id)
    now = time.time()
    result = StepResult(run_id=run_id, step="d", attempt=2, ok=True, started_at=now, finished_at=now,
                        output="forged").to_payload()
    task = StepTask(run_id=run_id, workflow="diamond", step="a", attempt=7, task="examples.double",
                    params={"x": 999}).to_payload()
    report = DeadLetterReport(queue="x", code="forged_code", detail="forged row").to_payload()
    sent = [publish(cluster, "results", "record_result", result),
            publish(cluster, "coordinator", "step_finished", StepFinished(run_id, "d", 2).to_payload()),
            publish(cluster, "steps", "execute_step", task),  # archived through an executor's own report
            publish(cluster, "results", "record_dead_letter", report),
            publish(cluster, "ingress", "cancel_run", CancelRun(run_id=run_id).to_payload()),
            publish(cluster, "ingress", "retry_run", RetryRun(run_id=run_id).to_payload())]
    assert set(rejections(db, sent).values()) == {"unsigned"}
    assert query(db, "select count(*) from dead_letters where code = 'forged_code'") == [(0,)]
    assert attempts(db, run_id) == before
    assert query(db, "select status from runs where id = %s", run_id) == [("succeeded",)]
    probe(cluster)


def test_a_key_of_the_wrong_role_cannot_cancel_and_an_operator_key_can(cluster) -> None:
    db = cluster["MINIFLOW_DATABASE_URL"]
    made = miniflow(cluster, "keys", "create", "--name", f"producer-{uuid.uuid4().hex[:6]}", "--role", "producer",
                    "--json")
    producer = ClientKey.from_token(json.loads(made.stdout)["token"])
    started = miniflow(cluster, "start", "diamond", "-p", "x=3", "--json")
    key = json.loads(started.stdout)["idempotency_key"]
    [(run_id,)] = poll(lambda: query(db, "select id from runs where idempotency_key = %s", key), what="the run")
    fields = envelope(f"{cluster['MINIFLOW_NAMESPACE']}.ingress", "cancel_run", CancelRun(run_id=run_id).to_payload())
    body = codec.pack(fields)
    publish_raw(BROKER_URL, fields["queue_name"], body, producer.headers(body))
    assert rejections(db, [fields["message_id"]]) == {fields["message_id"]: "key_not_allowed"}
    cli = miniflow(dict(cluster, MINIFLOW_KEY=json.loads(made.stdout)["token"]), "runs", "cancel", run_id)
    assert cli.returncode == 2 and "has role producer" in cli.stderr  # refused before publishing


def test_a_compromised_executor_cannot_report_on_an_attempt_it_was_not_given(cluster, done_run) -> None:
    db, run_id = cluster["MINIFLOW_DATABASE_URL"], done_run["id"]
    token = executor_token(cluster)
    assert token is not None
    executor = ClientKey.from_token(token)
    before = attempts(db, run_id)
    now = time.time()
    forged = StepResult(run_id=run_id, step="d", attempt=2, ok=True, started_at=now, finished_at=now,
                        output="forged", cap=f"{executor.kid}.AAAAAAAAAAAAAAAAAAAAAAAA").to_payload()
    task = StepTask(run_id=run_id, workflow="diamond", step="a", attempt=7, task="examples.double").to_payload()
    sent = [publish(cluster, "results", "record_result", forged, executor),
            publish(cluster, "steps", "execute_step", task, executor)]
    # an executor knows only the core's public keys: to it, any other key is unknown
    assert rejections(db, sent) == {sent[0]: "bad_capability", sent[1]: "unknown_key"}
    assert attempts(db, run_id) == before


@pytest.mark.parametrize("option, value", [("throws", "NotAType"), ("eta", 32503680000000), ("max_retries", 10 ** 6),
                                           ("min_backoff", 0), ("pipe_target", {"actor_name": "x"})])
def test_a_reserved_option_is_rejected_and_every_worker_thread_keeps_serving(cluster, option, value) -> None:
    db = cluster["MINIFLOW_DATABASE_URL"]
    ids = [publish_start(BROKER_URL, cluster["MINIFLOW_NAMESPACE"], "diamond", {"x": 1}, f"opt-{uuid.uuid4()}",
                         options={option: value}) for _ in range(20)]  # more than the coordinator's threads
    assert set(rejections(db, ids).values()) == {"option_not_allowed"}
    probe(cluster)


def test_an_out_of_range_value_is_rejected_once_and_never_retried(cluster) -> None:
    db = cluster["MINIFLOW_DATABASE_URL"]
    ns = cluster["MINIFLOW_NAMESPACE"]
    payload = {"v": 1, "workflow": "diamond", "params": {"x": 1}, "idempotency_key": "k" * 5000}
    fields = envelope(f"{ns}.ingress", "start_workflow", payload)
    publish_raw(BROKER_URL, fields["queue_name"], codec.pack(fields))
    assert rejections(db, [fields["message_id"]]) == {fields["message_id"]: "bad_value"}
    probe(cluster)  # by now a retry would have been archived a second time
    assert query(db, "select count(*) from dead_letters where message_id = %s", fields["message_id"]) == [(1,)]
