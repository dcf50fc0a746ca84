"""A run's priority on every hop of its steps: the step messages (and their delayed retries) and the
executor's results carry it as the broker priority. On the embedded broker, where the messages can
be looked at; tests/integration/test_priorities.py shows the overtaking on RabbitMQ."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from miniflow.actors.executor import step_priority
from miniflow.coordinator import loads
from miniflow.protocol.names import EXECUTE_STEP, RECORD_RESULT

FLAKY_PAIR = """
name: prio
steps:
  - {name: first, task: test.flaky, config: {fail_times: 1}, retries: 1, backoff: {initial: 0.01, max: 0.01, jitter: 0}}
  - {name: after, task: test.echo, needs: [first]}
"""


@pytest.mark.parametrize("priority", [0, 7])
def test_steps_their_retries_and_their_results_carry_the_run_priority(engine, priority: int) -> None:
    seen: list[tuple[str, str, int | None]] = []

    def watch(message: Any, delay: int | None, send: Any) -> Any:
        if message.actor_name in (EXECUTE_STEP, RECORD_RESULT):
            payload = message.args[0]
            seen.append((message.actor_name, f"{payload['step']}#{payload['attempt']}",
                         message.options.get("broker_priority")))
        return send(message, delay)

    engine.broker.interceptor = watch
    engine.deploy(loads(FLAKY_PAIR))
    run = engine.wait(engine.submit("prio", {}, priority=priority), timeout=30)
    assert run.status == "succeeded"
    expected = priority or None
    # The retry passes twice: into the delay queue, then (when due) into its pool, both times with it.
    assert sorted(seen) == sorted([(EXECUTE_STEP, "first#1", expected), (RECORD_RESULT, "first#1", expected),
                                   (EXECUTE_STEP, "first#2", expected), (EXECUTE_STEP, "first#2", expected),
                                   (RECORD_RESULT, "first#2", expected),
                                   (EXECUTE_STEP, "after#1", expected), (RECORD_RESULT, "after#1", expected)])


@pytest.mark.parametrize("options,expected", [
    ({"broker_priority": 9}, 9), ({"broker_priority": 0}, 0), ({}, 0), (None, 0),
    ({"broker_priority": 10}, 0), ({"broker_priority": -1}, 0), ({"broker_priority": True}, 0),
    ({"broker_priority": "9"}, 0),
])
def test_a_result_takes_only_a_valid_priority_from_its_step_message(options: Any, expected: int) -> None:
    assert step_priority(SimpleNamespace(options=options)) == expected
    assert step_priority(None) == 0
