"""One trace per run, across processes, exported over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from miniflow.ops.tracesink import OtlpReceiver, ReceivedSpan

from .conftest import BROKER_URL, WorkerProcess, miniflow, poll, query
from .raw_producer import publish_start

SECRET = "tr4ce-s3cret-token"
TRACED_WORKFLOW = """
name: traced-diamond
params:
  x: {default: 3}
  token: {default: none, secret: true}
steps:
  - {name: a, task: diamond.source}
  - {name: b, task: diamond.double, needs: [a]}
  - {name: c, task: diamond.square, needs: [a]}
  - {name: d, task: diamond.sum, needs: [b, c]}
"""


@pytest.fixture(scope="module")
def traced(env: dict[str, str], namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    """Workers of their own namespace exporting to a receiver: coordinator+results and an executor."""
    from miniflow.actors.broker import delete_topology
    from miniflow.protocol.names import QueueNames

    ns = f"{namespace}_tr"
    logs = tmp_path_factory.mktemp("traced-logs")
    with OtlpReceiver() as receiver:
        traced_env = dict(env, MINIFLOW_NAMESPACE=ns, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                          OTEL_BSP_SCHEDULE_DELAY="100", OTEL_TRACES_SAMPLER="always_on", MINIFLOW_TRACE_SQL="on")
        assert miniflow(traced_env, "db", "upgrade").returncode == 0
        wf = logs / "traced.yaml"
        wf.write_text(TRACED_WORKFLOW)
        assert miniflow(traced_env, "deploy", str(wf)).returncode == 0
        workers = [
            WorkerProcess(dict(traced_env, OTEL_SERVICE_NAME="coordinator"),
                          ["--role", "coordinator", "--role", "results", "--threads", "4"], logs / "coord.log"),
            WorkerProcess(dict(traced_env, OTEL_SERVICE_NAME="executor"),
                          ["--steps", "examples.steps", "--threads", "4"], logs / "exec.log"),
        ]
        try:
            for w in workers:
                w.wait_ready()
            yield traced_env, receiver
        finally:
            for w in workers:
                w.stop()
            delete_topology(BROKER_URL, QueueNames(ns))


def expected_spans(spans: list[ReceivedSpan], root_parent: str = "") -> bool:
    """All of the run's spans are in: each process exports on its own schedule, so wait until the
    counts are complete and every span's parent has arrived too."""
    names = [s.name for s in spans]
    ids = {s.span_id for s in spans}
    # coordinator and results share a process here, so each result advances the run in place
    return (names.count("process record_result") == 4 and names.count("process execute_step") == 4
            and "run succeeded" in names
            and sum(1 for s in spans if s.parent_id not in ids or s.parent_id == root_parent) == 1)


def assert_one_tree(spans: list[ReceivedSpan], root_parent: str = "") -> ReceivedSpan:
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id == root_parent or s.parent_id not in ids]
    assert len(roots) == 1, f"expected one root, got {[(r.name, r.service) for r in roots]}"
    assert roots[0].parent_id == root_parent
    return roots[0]


def test_a_run_is_one_trace_from_the_producer_span_through_every_hop(traced):
    env, receiver = traced
    result = miniflow(dict(env, OTEL_SERVICE_NAME="producer"), "start", "traced-diamond", "-p", "x=2",
                      "-p", f"token={SECRET}", "--wait", "--timeout", "60", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["trace_id"] and len(run["trace_id"]) == 32
    spans = poll(lambda: (s := receiver.trace(run["trace_id"])) and expected_spans(s) and s,
                 what="the run's spans", timeout=30)
    root = assert_one_tree(spans)
    assert root.name == "start traced-diamond" and root.service == "producer"
    names = [s.name for s in spans]
    for name in ("process start_workflow", "run succeeded"):
        assert name in names, f"missing span {name!r} in {sorted(set(names))}"
    assert not [n for n in names if n.startswith(("dispatch ", "wait "))]  # folded into the spans below
    executions = [s for s in spans if s.name == "process execute_step"]
    assert sorted(s.attributes["miniflow.step"] for s in executions) == ["a", "b", "c", "d"]
    assert all(s.service == "executor" and s.attributes["miniflow.queue_wait_ms"] >= 0 for s in executions)
    assert {s.service for s in spans} >= {"producer", "coordinator", "executor"}
    by_id = {s.span_id: s for s in spans}
    deciders = {}
    for execution in executions:  # each execution hangs under the span that dispatched it, across processes
        parent = by_id[execution.parent_id]
        assert parent.service == "coordinator" and parent.attributes["miniflow.messages_sent"] >= 1
        deciders[execution.attributes["miniflow.step"]] = (parent.name, parent.attributes.get("miniflow.step"))
    assert deciders["a"] == ("process start_workflow", None)
    assert deciders["b"] == deciders["c"] == ("process record_result", "a")
    assert deciders["d"][0] == "process record_result" and deciders["d"][1] in ("b", "c")  # the later of the two
    assert any("db.system" in s.attributes or "db.system.name" in s.attributes for s in spans), \
        "database work is not traced (MINIFLOW_TRACE_SQL=on)"
    assert all(SECRET not in json.dumps(s.attributes, default=str) for s in spans)
    show = miniflow(env, "runs", "show", run["id"])
    assert run["trace_id"] in show.stdout


def test_a_step_exception_is_recorded_on_its_span(traced):
    env, receiver = traced
    result = miniflow(env, "start", "traced-diamond", "-p", "x=oops", "--wait", "--timeout", "60", "--json")
    assert result.returncode == 1
    run = json.loads(result.stdout)
    failed = poll(lambda: [s for s in receiver.trace(run["trace_id"])
                           if s.name == "process execute_step" and s.status_code == 2],
                  what="the failed step span", timeout=30)
    assert "exception" in failed[0].events
    assert poll(lambda: [s for s in receiver.trace(run["trace_id"]) if s.name == "run failed"],
                what="the run failed span", timeout=30)


def test_a_foreign_producer_with_its_own_traceparent_joins_that_trace(traced):
    env, receiver = traced
    trace_id, parent_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    key = f"foreign-{uuid.uuid4()}"
    publish_start(BROKER_URL, env["MINIFLOW_NAMESPACE"], "traced-diamond", {"x": 1}, key,
                  options={"traceparent": f"00-{trace_id}-{parent_span}-01"})
    spans = poll(lambda: (s := receiver.trace(trace_id)) and expected_spans(s, parent_span) and s,
                 what="the foreign run's spans", timeout=60)
    root = assert_one_tree(spans, root_parent=parent_span)
    assert root.name == "process start_workflow"
    stored = query(env["MINIFLOW_DATABASE_URL"], "select trace_id from runs where idempotency_key = %s", key)
    assert stored == [(trace_id,)]

