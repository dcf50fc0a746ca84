"""The closed envelope: a message can no longer steer dramatiq through its options."""

from __future__ import annotations

import pytest

from miniflow.coordinator import loads
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.polling import poll_until
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.codes import Reason
from miniflow.protocol.envelope import envelope
from miniflow.protocol.errors import MessageRejected
from miniflow.protocol.messages import StartWorkflow
from miniflow.protocol.names import START_WORKFLOW
from miniflow.protocol.options import check_options

ECHO = "name: echo\nsteps:\n  - {name: a, task: test.echo}\n"
RESERVED = [("throws", "not-a-type"), ("eta", 32503680000000), ("min_backoff", 1), ("max_retries", 1000),
            ("max_backoff", 1), ("retry_when", "x"), ("pipe_target", {"actor_name": "x"}), ("max_age", 1),
            ("on_failure", "record_dead_letter"), ("time_limit", 1)]


@pytest.mark.parametrize("name, value", RESERVED)
def test_a_reserved_option_on_the_ingress_queue_is_rejected(name, value) -> None:
    with pytest.raises(MessageRejected) as info:
        check_options({name: value}, delayed=False, step_queue=False)
    assert info.value.code == Reason.OPTION_NOT_ALLOWED


def test_the_options_miniflow_sets_itself_pass_within_their_bounds() -> None:
    check_options({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "retries": 3, "broker_priority": 9},
                  delayed=False, step_queue=False)
    check_options({"time_limit": 60_000, "declines": 2}, delayed=False, step_queue=True)
    with pytest.raises(MessageRejected) as info:
        check_options({"time_limit": 10 ** 12}, delayed=False, step_queue=True)
    assert info.value.code == Reason.BAD_OPTION
    with pytest.raises(MessageRejected) as far:
        check_options({"eta": 32503680000000}, delayed=True, step_queue=False)  # the year 3000
    assert far.value.code == Reason.BAD_OPTION


def test_forged_options_are_dead_lettered_and_the_worker_keeps_serving(engine: EmbeddedEngine) -> None:
    engine.deploy(loads(ECHO))
    start = StartWorkflow(workflow="echo").to_payload()
    for name, value in RESERVED:
        body = envelope(engine.names.ingress, START_WORKFLOW, start, options={name: value})
        engine.broker.put_raw(engine.names.ingress, codec.pack(body))
    # every worker thread still serves: a real start right after runs to its end
    run = engine.wait(engine.submit("echo"), timeout=30)
    assert run.status == "succeeded"

    def archived() -> list[str] | None:
        engine.settle()
        with engine.db.connect() as conn:
            codes = [r.code for r in repo.list_dead_letters(conn, 100)]
        return codes if len(codes) >= len(RESERVED) else None

    codes = poll_until(archived, timeout=30, what="every forged message archived")
    assert codes == [Reason.OPTION_NOT_ALLOWED] * len(RESERVED)
    with engine.db.connect() as conn:
        assert len(repo.list_runs(conn)) == 1  # none of the forged starts made a run
