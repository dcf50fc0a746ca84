"""Log lines say which run, step and attempt they are about, and which trace: the log context.

A real dramatiq worker (StubBroker, one worker thread) with MiniFlow's Tracing middleware handles
messages whose actors call ``annotate`` as the handlers and the executor do; the JSON lines carry
the fields, and the thread's next message does not inherit them.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from miniflow.actors import logcontext
from miniflow.actors.logcontext import MAX_FAILURE_LEN, MAX_VALUE_LEN, log_step_failure
from miniflow.actors.middleware.tracing import Tracing, annotate
from miniflow.ops import logging as mf_logging

LOGGER = "miniflow.test.logcontext"
logger = logging.getLogger(LOGGER)


@pytest.fixture(autouse=True)
def _clean_context() -> Iterator[None]:
    logcontext.clear()
    yield
    logcontext.clear()


def _configured(fmt: str) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("pika").level)
    stream = io.StringIO()
    mf_logging.configure("INFO", fmt, stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("pika").setLevel(saved[2])


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    yield from _configured("json")


@pytest.fixture
def text_logs() -> Iterator[io.StringIO]:
    yield from _configured("text")


def _ours(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == LOGGER]


def test_json_lines_from_a_worker_carry_the_message_s_ids_and_trace_and_the_next_message_none(json_logs):
    broker = StubBroker()
    broker.emit_after("process_boot")
    broker.add_middleware(Tracing())
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=0)
    def annotated(run_id: str) -> None:
        annotate(run_id=run_id, workflow="diamond", step="b", attempt=2, task="examples.add", node="eu1",
                 outcome="succeeded", isolated=None)
        span_context = trace.get_current_span().get_span_context()
        seen["first"] = (threading.get_ident(), f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}")
        logger.info("first message")

    @dramatiq.actor(broker=broker, queue_name="q", max_retries=0)
    def plain() -> None:
        seen["second"] = threading.get_ident()
        logger.info("second message")

    producer = TracerProvider().get_tracer("test")
    with producer.start_as_current_span("producer") as span:  # its context travels in the message options
        annotated.send("run-1")
        sent_trace_id = f"{span.get_span_context().trace_id:032x}"
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("q")
        plain.send()
        broker.join("q")
        worker.join()
    finally:
        worker.stop()
        broker.close()

    first, second = _ours(json_logs)
    assert first["message"] == "first message"
    assert {k: first[k] for k in logcontext.FIELDS} == {
        "run_id": "run-1", "workflow": "diamond", "step": "b", "attempt": 2, "node": "eu1", "task": "examples.add"}
    assert "outcome" not in first and "isolated" not in first  # span attributes only, not log fields
    thread, trace_id, span_id = seen["first"]
    assert first["trace_id"] == trace_id == sent_trace_id  # the log line and the run's trace link up
    assert first["span_id"] == span_id

    assert seen["second"] == thread  # the same worker thread handled both
    assert second["message"] == "second message"
    assert not set(logcontext.FIELDS) & set(second)
    assert second.get("trace_id") != sent_trace_id
    assert logcontext.current() == {}


def test_the_trace_and_span_ids_are_the_current_span_s(json_logs):
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.warning("inside")
    logger.warning("outside")
    inside, outside = _ours(json_logs)
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}" and len(inside["trace_id"]) == 32
    assert inside["span_id"] == f"{context.span_id:016x}" and len(inside["span_id"]) == 16
    assert "trace_id" not in outside and "span_id" not in outside


def test_annotate_still_sets_the_same_span_attributes():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        annotate(run_id="r1", step="a", attempt=1, outcome="failed", isolated=None)
    assert isinstance(span, ReadableSpan)
    assert dict(span.attributes or {}) == {
        "miniflow.run_id": "r1", "miniflow.step": "a", "miniflow.attempt": 1, "miniflow.outcome": "failed"}


def test_values_are_bounded_and_only_the_identifying_fields_are_kept(json_logs):
    logcontext.bind(run_id="r" * 1000, step=None, params={"password": "hunter2-secret"}, output="big")
    logger.warning("bounded")
    (line,) = _ours(json_logs)
    assert line["run_id"] == "r" * MAX_VALUE_LEN
    assert "step" not in line
    assert "hunter2" not in json_logs.getvalue() and "params" not in line and "output" not in line


def test_a_message_that_ends_or_is_skipped_leaves_no_context_behind():
    tracing = Tracing()
    broker = StubBroker()
    message: dramatiq.Message[Any] = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    tracing.before_process_message(broker, message)
    annotate(run_id="r1", step="a")
    tracing.after_process_message(broker, message, exception=ValueError("x"))
    assert logcontext.current() == {}
    annotate(run_id="r2")  # bound outside any message of ours (a skip before Tracing started one)
    tracing.after_skip_message(broker, message)
    assert logcontext.current() == {}


def test_text_lines_end_with_run_and_step_and_escape_what_came_from_a_message(text_logs):
    logcontext.bind(run_id="run-1", step="evil\nINFO forged line\x1b[31m", attempt=3)
    logger.warning("failed %s", "with\nnewline\x1b[2J")
    out = text_logs.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")  # one line, whatever the values held
    assert "\x1b" not in out
    assert out.rstrip("\n").endswith(r" run=run-1 step=evil\nINFO forged line\x1b[31m#3")
    assert r"failed with\nnewline\x1b[2J" in out


def test_text_lines_without_context_are_as_before(text_logs):
    logger.warning("plain")
    line = text_logs.getvalue().rstrip("\n")
    assert line.endswith(f"WARNING {LOGGER}: plain")


def test_log_step_failure_truncates_the_message_and_names_the_error_type(json_logs):
    log_step_failure(logger, "ValueError", "ValueError: " + "x" * 2000)
    log_step_failure(logger, "StepTimedOut", "step exceeded its timeout of 5s")
    long, timed_out = _ours(json_logs)
    assert long["level"] == "WARNING"
    assert long["message"] == "step failed: ValueError: " + "x" * MAX_FAILURE_LEN
    assert long["error_type"] == "ValueError"
    assert timed_out["message"] == "step failed: StepTimedOut: step exceeded its timeout of 5s"
    assert timed_out["error_type"] == "StepTimedOut"


def test_log_step_failure_in_text_mode_stays_on_one_line(text_logs):
    log_step_failure(logger, "RuntimeError", "line one\nline two")
    out = text_logs.getvalue()
    assert out.count("\n") == 1 and r"step failed: RuntimeError: line one\nline two" in out


def test_exc_type_is_set_for_logger_exception(json_logs):
    try:
        raise KeyError("amqp://guest:guest@host/")
    except KeyError:
        logger.exception("it broke")
    logger.error("no exception")
    broke, plain = _ours(json_logs)
    assert broke["exc_type"] == "KeyError"
    assert "KeyError" in broke["exception"] and "guest:guest" not in broke["exception"]
    assert "exc_type" not in plain and "exception" not in plain


def test_a_failed_step_logs_one_warning_with_its_ids_type_and_masked_message(engine, json_logs):
    from miniflow.coordinator import loads

    engine.deploy(loads("""
name: leaks
params: {token: {required: true, secret: true}}
steps:
  - {name: a, task: test.leaky, retries: 0}
"""))
    run = engine.wait(engine.submit("leaks", {"token": "s3cr3t-value"}), timeout=30)
    assert run.status == "failed"
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line["message"].startswith("step failed:")]
    assert failed["level"] == "WARNING" and failed["logger"] == "miniflow.actors"
    assert failed["message"] == "step failed: PermissionError: token *** was refused"
    assert failed["error_type"] == "PermissionError"
    assert (failed["run_id"], failed["workflow"], failed["step"], failed["attempt"], failed["task"]) == \
        (run.run_id, "leaks", "a", 1, "test.leaky")
    assert "s3cr3t-value" not in json_logs.getvalue()
