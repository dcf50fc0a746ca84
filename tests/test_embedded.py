"""A workflow through all four actors in one process: StubBroker + SQLite (the embedded mode)."""

from __future__ import annotations

import logging
import time

from miniflow.actors.metrics import Metrics
from miniflow.coordinator import Results, StartOutcome, loads
from miniflow.ops.polling import poll_until
from miniflow.persistence import AttemptRow
from miniflow.persistence import repository as repo
from miniflow.protocol import codec
from miniflow.protocol.clock import utcnow
from miniflow.protocol.envelope import envelope
from miniflow.protocol.messages import StartWorkflow, StepResult
from miniflow.protocol.names import EXECUTE_STEP, START_WORKFLOW

DIAMOND = """
name: diamond
params: {x: {default: 3}}
steps:
  - {name: a, task: diamond.source}
  - {name: b, task: diamond.double, needs: [a]}
  - {name: c, task: diamond.square, needs: [a]}
  - {name: d, task: diamond.sum, needs: [b, c]}
"""


def flaky_workflow(fail_times: int, retries: int) -> str:
    return f"""
name: flaky
steps:
  - name: first
    task: test.flaky
    config: {{fail_times: {fail_times}}}
    retries: {retries}
    backoff: {{initial: 0.01, max: 0.05, jitter: 0}}
  - {{name: after, task: test.echo, needs: [first]}}
"""


def dead_letters(engine):
    with engine.db.connect() as conn:
        return repo.list_dead_letters(conn)


def test_the_diamond_runs_through_all_four_actors_and_passes_outputs(engine):
    engine.deploy(loads(DIAMOND))
    run = engine.wait(engine.submit("diamond", {"x": 4}), timeout=30)
    assert run.status == "succeeded"
    outputs = {s.step: s.output for s in run.steps}
    assert outputs == {"a": 4, "b": 8, "c": 16, "d": 24}
    assert sorted((a.step, a.attempt, a.ok) for a in run.attempts) == [
        ("a", 1, True), ("b", 1, True), ("c", 1, True), ("d", 1, True)]
    assert outbox_drains(engine)


def outbox_drains(engine, timeout: float = 10.0) -> bool:
    """The relay deletes published rows in the background: poll until the outbox is empty."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with engine.db.connect() as conn:
            if repo.count_outbox(conn) == 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_a_step_receives_run_params_and_the_outputs_it_needs(engine):
    engine.deploy(loads("""
name: passing
params: {who: {required: true}, greeting: {default: hello}}
steps:
  - {name: a, task: diamond.source}
  - {name: b, task: test.echo, needs: [a]}
"""))
    run = engine.wait(engine.submit("passing", {"who": "ada"}), timeout=30)
    echo = next(s for s in run.steps if s.step == "b").output
    assert echo["params"] == {"who": "ada", "greeting": "hello"}
    assert echo["inputs"] == {"a": 1}
    assert echo["key"] == f"{run.run_id}:b:1"


def test_a_step_that_fails_twice_then_succeeds_is_recorded_as_three_attempts(engine):
    engine.deploy(loads(flaky_workflow(fail_times=2, retries=2)))
    run = engine.wait(engine.submit("flaky"), timeout=30)
    assert run.status == "succeeded"
    first = [a for a in run.attempts if a.step == "first"]
    assert [(a.attempt, a.ok) for a in first] == [(1, False), (2, False), (3, True)]
    assert "flaky failure 1" in first[0].error
    assert next(s for s in run.steps if s.step == "first").output == {"calls": 3, "attempt": 3}


def test_a_step_that_keeps_failing_fails_the_run_with_its_reason_and_skips_the_rest(engine):
    engine.deploy(loads(flaky_workflow(fail_times=10, retries=1)))
    run = engine.wait(engine.submit("flaky"), timeout=30)
    assert run.status == "failed"
    assert "step 'first' failed after 2 attempts" in run.error
    assert "flaky failure 2" in run.error
    statuses = {s.step: s.status for s in run.steps}
    assert statuses == {"first": "failed", "after": "skipped"}
    assert len([a for a in run.attempts if a.step == "first"]) == 2


def test_the_same_idempotency_key_makes_one_run(engine):
    engine.deploy(loads(DIAMOND))
    key = engine.submit("diamond", key="order-1")
    engine.submit("diamond", key="order-1")
    run = engine.wait(key, timeout=30)
    engine.settle()
    with engine.db.connect() as conn:
        assert [r.id for r in repo.list_runs(conn)] == [run.run_id]


def test_a_start_for_an_unknown_workflow_is_rejected_and_archived_without_creating_a_run(engine):
    engine.submit("nope")
    engine.settle()
    with engine.db.connect() as conn:
        assert repo.list_runs(conn) == []
    [letter] = dead_letters(engine)
    assert letter.code == "unknown_workflow"
    assert letter.queue == engine.names.ingress
    assert "nope" in letter.detail


def test_an_unknown_version_and_bad_params_are_rejected_with_their_own_codes(engine):
    engine.deploy(loads(DIAMOND))
    engine.submit("diamond", version=9)
    engine.submit("diamond", {"y": 1})
    engine.settle()
    assert sorted(d.code for d in dead_letters(engine)) == ["invalid_params", "unknown_version"]


def test_malformed_messages_are_dead_lettered_with_a_reason_while_a_good_start_completes(engine, caplog):
    engine.deploy(loads(DIAMOND))
    ingress = engine.names.ingress
    secret = "hunter2-secret-param"
    bad_actor = envelope(ingress, EXECUTE_STEP, {"v": 1, "password": secret})
    wrong_queue = envelope("elsewhere", START_WORKFLOW, StartWorkflow("diamond").to_payload())
    bad_payload = envelope(ingress, START_WORKFLOW, {"v": 1, "workflow": "diamond", "params": {"pw": secret},
                                                     "surprise": 1})
    with caplog.at_level(logging.INFO):
        engine.broker.put_raw(ingress, b"\xc1 not msgpack " + secret.encode())
        engine.broker.put_raw(ingress, codec.pack(bad_actor))
        engine.broker.put_raw(ingress, codec.pack(wrong_queue))
        engine.broker.put_raw(ingress, codec.pack(bad_payload))
        engine.broker.put_raw(ingress, codec.pack({"queue_name": ingress}))
        run = engine.wait(engine.submit("diamond"), timeout=30)
        engine.settle()
    assert run.status == "succeeded"
    letters = dead_letters(engine)
    assert sorted(d.code for d in letters) == [
        "actor_not_allowed", "envelope_missing_field", "malformed", "queue_mismatch", "unknown_field"]
    assert all(d.raw for d in letters)  # a bounded copy of the bytes is archived
    assert all(len(d.raw) <= codec.RAW_KEEP for d in letters)
    assert secret not in caplog.text  # the payload never reaches the log


def test_a_step_returning_data_that_cannot_be_stored_fails_with_a_clear_error(engine):
    engine.deploy(loads("name: bad-output\nsteps:\n  - {name: a, task: test.not_json}\n"))
    run = engine.wait(engine.submit("bad-output"), timeout=30)
    assert run.status == "failed"
    assert "not JSON-compatible" in run.attempts[0].error


def test_a_step_no_executor_can_run_waits_with_a_note_and_uses_no_attempt(engine):
    engine.deploy(loads("name: missing-task\nsteps:\n  - {name: a, task: no.such.task}\n"))
    key = engine.submit("missing-task")

    def noted():
        with engine.db.connect() as conn:
            run_id = repo.run_id_for_key(conn, key)
            step = repo.get_steps(conn, run_id)["a"] if run_id else None
        return (run_id, step) if step is not None and step.note else None

    run_id, step = poll_until(noted, timeout=30, what="the step's note")
    assert "task 'no.such.task' is not registered on executor" in step.note
    assert step.status == "queued" and step.attempt == 1
    engine.cancel(run_id)
    run = engine.wait(key, timeout=30)
    assert run.status == "cancelled" and run.attempts == []  # handed back, never recorded as an attempt


def test_a_step_over_its_timeout_fails_as_a_timeout(engine):
    engine.deploy(loads("name: slow\nsteps:\n  - {name: a, task: test.sleep, timeout: 0.2, config: {seconds: 5}}\n"))
    run = engine.wait(engine.submit("slow"), timeout=30)
    assert run.status == "failed"
    assert run.attempts[0].error_type == "Timeout"
    assert run.attempts[0].duration_ms < 4500


def test_a_result_delivered_twice_is_recorded_once(engine):
    engine.deploy(loads(DIAMOND))
    with engine.db.transaction() as conn:
        outcome: StartOutcome = engine.node.coordinator.start(conn, StartWorkflow("diamond"), "m-1")
    result = StepResult(run_id=outcome.run_id, step="a", attempt=1, ok=True, started_at=1.0, finished_at=2.0,
                        output=3)
    with engine.db.transaction() as conn:
        first = Results(engine.node.coordinator).record(conn, result)
    with engine.db.transaction() as conn:
        second = Results(engine.node.coordinator).record(conn, result)
    assert len(first) == 1 and second == []
    with engine.db.connect() as conn:
        assert len(repo.get_attempts(conn, outcome.run_id)) == 1


def test_a_stale_attempt_is_fenced_by_the_coordinator(engine):
    engine.deploy(loads(flaky_workflow(fail_times=0, retries=2)))
    from miniflow.protocol.messages import StepFinished

    with engine.db.transaction() as conn:
        outcome = engine.node.coordinator.start(conn, StartWorkflow("flaky"), "m-2")
        now = utcnow()
        repo.insert_attempt(conn, AttemptRow(run_id=outcome.run_id, step="first", attempt=7, ok=True, output=1,
                                             started_at=now, finished_at=now, duration_ms=1.0, recorded_at=now))
        sent = engine.node.coordinator.step_finished(conn, StepFinished(outcome.run_id, "first", 7))
        steps = repo.get_steps(conn, outcome.run_id)
    assert sent == []
    assert steps["first"].status == "queued" and steps["first"].attempt == 1


def test_the_csv_example_writes_its_report(tmp_path):
    from miniflow.coordinator import load_file
    from miniflow.ops.embedded import run_embedded

    workflow = load_file("examples/csv_report.yaml")
    run = run_embedded(workflow, {"out_dir": str(tmp_path / "out")}, f"sqlite:///{tmp_path / 'x.db'}",
                       timeout=60)
    assert run.status == "succeeded"
    report = next(s for s in run.steps if s.step == "report").output
    text = (tmp_path / "out").joinpath(report["report"].split("/")[-1]).read_text()
    assert "Total revenue" in text and report["best_region"] in text


def test_secret_params_are_masked_in_step_errors_and_in_what_the_cli_shows(engine):
    from miniflow.ops.views import run_to_dict

    engine.deploy(loads("""
name: with-secret
params: {token: {required: true, secret: true}, region: {default: eu}}
steps:
  - {name: a, task: test.leaky}
"""))
    run = engine.wait(engine.submit("with-secret", {"token": "s3cr3t-value"}), timeout=30)
    assert run.status == "failed"
    assert "s3cr3t-value" not in run.error and "***" in run.error
    assert "s3cr3t-value" not in run.attempts[0].error
    with engine.db.connect() as conn:
        row = repo.get_run(conn, run.run_id)
        assert row is not None
        workflow = engine.node.coordinator.catalog.workflow(conn, row.workflow, row.version)
        assert workflow is not None
    shown = run_to_dict(row, run.steps, run.attempts, workflow.secret_params())
    assert shown["params"] == {"token": "***", "region": "eu"}


def poll_result(engine, run_id, check, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine.settle()
        result = engine.result(run_id)
        if check(result):
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def wait_status(engine, run_id, statuses, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.db.connect() as conn:
            run = repo.get_run(conn, run_id)
        if run is not None and run.status in statuses:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {statuses}")


def run_id_of(engine, key, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.db.connect() as conn:
            run_id = repo.run_id_for_key(conn, key)
        if run_id:
            return run_id
        time.sleep(0.02)
    raise AssertionError("run not created")


SLOW_THEN_FAST = """
name: slow
steps:
  - {name: first, task: test.sleep, config: {seconds: 30}}
  - {name: second, task: test.echo, needs: [first]}
"""


def test_a_cancelled_run_dispatches_nothing_more_and_ignores_the_late_result(engine):
    engine.deploy(loads(SLOW_THEN_FAST.replace("seconds: 30", "seconds: 0.5")))
    key = engine.submit("slow")
    run_id = run_id_of(engine, key)
    engine.cancel(run_id, reason="operator said so")
    run = engine.wait(key, timeout=30)
    assert run.status == "cancelled" and run.error == "cancelled: operator said so"
    # the step still finishes on its node: its result is recorded, and changes nothing
    final = poll_result(engine, run_id, lambda r: [a for a in r.attempts if a.step == "first"])
    assert final.status == "cancelled"
    assert {s.step: s.status for s in final.steps} == {"first": "cancelled", "second": "skipped"}
    assert [a.step for a in final.attempts] == ["first"]


def test_retry_reruns_a_failed_run_from_its_failed_steps_keeping_succeeded_outputs(engine):
    engine.deploy(loads("""
name: half
steps:
  - {name: good, task: diamond.source}
  - name: flaky
    task: test.flaky
    needs: [good]
    config: {fail_times: 2}
    retries: 1
    backoff: {initial: 0.01, jitter: 0}
  - {name: after, task: test.echo, needs: [flaky]}
"""))
    key = engine.submit("half")
    first = engine.wait(key, timeout=30)
    assert first.status == "failed"
    engine.retry(first.run_id)
    wait_status(engine, first.run_id, ("running", "succeeded"))
    second = engine.wait(key, timeout=30)
    assert second.status == "succeeded" and second.error is None
    by_step: dict[str, list[tuple[int, bool]]] = {}
    for a in second.attempts:
        by_step.setdefault(a.step, []).append((a.attempt, a.ok))
    assert by_step["good"] == [(1, True)]  # kept, not re-run
    assert by_step["flaky"] == [(1, False), (2, False), (3, True)]  # a fresh budget, numbers go on
    assert by_step["after"] == [(1, True)]


def test_a_run_past_its_workflow_timeout_fails_with_that_reason(engine):
    engine.deploy(loads("name: bounded\ntimeout: 0.5\nsteps:\n  - {name: a, task: test.sleep, config: {seconds: 2}}\n"))
    run = engine.wait(engine.submit("bounded"), timeout=30)
    assert run.status == "failed"
    assert run.error.startswith("workflow timeout")
    assert {s.step: s.status for s in run.steps} == {"a": "cancelled"}


def test_a_step_whose_inputs_exceed_the_message_limit_fails_the_run_with_a_clear_reason(engine):
    engine.deploy(loads("""
name: big-fan-in
steps:
  - {name: a, task: test.blob, config: {kib: 250}}
  - {name: b, task: test.blob, config: {kib: 250}}
  - {name: c, task: test.blob, config: {kib: 250}}
  - {name: d, task: test.blob, config: {kib: 250}}
  - {name: e, task: test.blob, config: {kib: 250}}
  - {name: j, task: test.echo, needs: [a, b, c, d, e]}
"""))
    run = engine.wait(engine.submit("big-fan-in"), timeout=30)
    assert run.status == "failed"
    assert "step 'j' cannot be dispatched" in run.error and "message limit" in run.error
    assert {s.step: s.status for s in run.steps}["j"] == "failed"
    assert outbox_drains(engine)


def refuse_results(engine, times: int) -> list[str]:
    """Make the broker refuse the first ``times`` results as an unreachable one would; returns the
    ids of the refused messages as they happen."""
    import dramatiq.errors

    real_enqueue = engine.broker.enqueue
    refused: list[str] = []

    def enqueue(message, *, delay=None):
        if message.queue_name == engine.names.results and len(refused) < times:
            refused.append(message.message_id)
            raise dramatiq.errors.ConnectionClosed(OSError("network is unreachable"))
        return real_enqueue(message, delay=delay)

    engine.broker.enqueue = enqueue
    return refused


def test_an_executor_keeps_a_result_it_could_not_send_and_delivers_it_when_the_broker_is_back(engine, caplog):
    """A partitioned executor must not drop finished work: the result is sent again, with backoff."""
    engine.deploy(loads(DIAMOND))
    refused = refuse_results(engine, 2)
    with caplog.at_level(logging.WARNING, logger="miniflow.actors"):
        run = engine.wait(engine.submit("diamond", {"x": 1}), timeout=30)
    assert run.status == "succeeded"
    assert len(refused) == 2
    assert sorted((a.step, a.attempt) for a in run.attempts) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert "delivered after 2 failed tries" in caplog.text


def test_a_retry_request_delivered_twice_re_runs_the_run_once(engine, caplog):
    engine.deploy(loads("""
name: doomed
steps:
  - {name: only, task: test.boom, retries: 0}
"""))
    key = engine.submit("doomed")
    first = engine.wait(key, timeout=30)
    assert first.status == "failed"
    request = engine.retry(first.run_id)
    poll_result(engine, first.run_id, lambda r: r.status == "failed" and len(r.attempts) == 2)
    with caplog.at_level(logging.INFO, logger="miniflow.coordinator"):
        engine.retry(first.run_id, message_id=request)  # the same request again, as a redelivery brings it
        deadline = time.monotonic() + 30
        while "already handled" not in caplog.text:
            assert time.monotonic() < deadline, "the duplicate retry was never handled"
            time.sleep(0.02)
    assert [a.attempt for a in engine.wait(key, timeout=30).attempts] == [1, 2]  # not re-run again
    engine.retry(first.run_id)  # a new request is a new retry
    poll_result(engine, first.run_id, lambda r: r.status == "failed" and len(r.attempts) == 3)


def test_the_reconciler_ends_a_run_whose_step_message_was_lost(engine):
    engine.deploy(loads("""
name: lost
steps:
  - {name: only, task: test.echo, timeout: 0.05}
"""))
    engine.node.coordinator.result_grace_s = 0
    with engine.db.transaction() as conn:  # started, but its step message never leaves the outbox
        run_id = engine.node.coordinator.start(conn, StartWorkflow(workflow="lost", idempotency_key="lost-1"),
                                               "m-lost").run_id
    deadline = time.monotonic() + 10
    assert engine.node.reconciler is not None
    metrics = engine.node.reconciler.metrics = Metrics("worker", "test")  # its repairs are counted by kind
    while engine.node.reconciler.run_once() == 0:  # overdue 50 ms after dispatch
        assert time.monotonic() < deadline, "the reconciler never repaired the run"
        time.sleep(0.01)
    run = wait_status(engine, run_id, ("failed",))
    assert "was lost" in run.error
    assert metrics.registry.get_sample_value("miniflow_reconciler_repairs_total", {"kind": "overdue"}) == 1


def test_a_root_step_over_the_message_limit_fails_its_run_at_start_with_the_reason(engine):
    pad = "y" * (600 * 1024)
    engine.deploy(loads(f"""
name: big-root
params: {{blob: {{required: true}}}}
steps:
  - {{name: first, task: test.echo, config: {{pad: "{pad}"}}}}
  - {{name: then, task: test.echo, needs: [first]}}
"""))
    run = engine.wait(engine.submit("big-root", {"blob": "x" * (500 * 1024)}), timeout=30)
    assert run.status == "failed"
    assert "step 'first' cannot be dispatched" in run.error
    assert {s.step: s.status for s in run.steps} == {"first": "failed", "then": "skipped"}
    assert run.attempts == []
    assert outbox_drains(engine)


def test_a_step_time_limit_does_not_cut_off_the_hand_in_of_its_result(engine, caplog):
    """The limit bounds the body; waiting for the broker to take the result is not the step's time."""
    engine.deploy(loads("""
name: quick
steps:
  - {name: only, task: test.flaky, timeout: 0.2, retries: 0}
"""))
    refuse_results(engine, 2)  # with the backoff, ~1.5 s of refusals: well past the 0.2 s limit
    with caplog.at_level(logging.WARNING, logger="miniflow.actors"):
        run = engine.wait(engine.submit("quick"), timeout=30)
    assert run.status == "succeeded"
    assert [(a.attempt, a.output) for a in run.attempts] == [(1, {"calls": 1, "attempt": 1})]  # ran once
    assert "delivered after 2 failed tries" in caplog.text


def test_a_start_sent_again_after_a_redeploy_that_would_reject_it_finds_its_run(engine, caplog):
    engine.deploy(loads("name: evolving\nsteps:\n  - {name: only, task: test.echo}\n"))
    first = engine.wait(engine.submit("evolving", key="evolve-1"), timeout=30)
    engine.deploy(loads("name: evolving\nparams: {needed: {required: true}}\n"
                        "steps:\n  - {name: only, task: test.echo}\n"))
    with caplog.at_level(logging.INFO, logger="miniflow.actors"):
        engine.submit("evolving", key="evolve-1")  # the producer re-sends its start
        deadline = time.monotonic() + 30
        while "duplicate start of evolving" not in caplog.text:
            assert time.monotonic() < deadline, "the re-sent start was never handled"
            time.sleep(0.02)
    assert engine.wait("evolve-1", timeout=30).run_id == first.run_id
    assert dead_letters(engine) == []


def test_a_failed_attempt_keeps_its_traceback(engine):
    engine.deploy(loads("name: tb\nsteps:\n  - {name: a, task: test.boom}\n"))
    run = engine.wait(engine.submit("tb"), timeout=30)
    trace = run.attempts[0].traceback or ""
    assert trace.startswith("Traceback") and "in boom" in trace and "ValueError: the input is broken" in trace
    assert run.attempts[0].error_type == "ValueError"


def test_a_long_step_shows_as_running_on_its_node_until_it_ends(engine):
    engine.deploy(loads("name: long\nsteps:\n  - {name: nap, task: test.sleep, config: {seconds: 2}}\n"))
    key = engine.submit("long")

    def running():
        with engine.db.connect() as conn:
            run_id = repo.run_id_for_key(conn, key)
            step = repo.get_steps(conn, run_id)["nap"] if run_id else None
        return step if step is not None and step.running else None

    step = poll_until(running, timeout=30, what="the step to show as running")
    assert step.node == engine.node.node and step.started_at is not None
    run = engine.wait(key, timeout=30)
    assert run.status == "succeeded" and not run.steps[0].running
