"""Concurrency limits of runs (coordinator/concurrency.py): a workflow's max_active_runs and a limit
per value of a key; a run past a limit is `queued`, nothing of it dispatched, and begins when an end
makes room, the first to admit first. On the embedded engine (tests/integration/test_concurrency.py
has two coordinators on real services)."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime

import pytest

from miniflow.coordinator import Catalog, loads
from miniflow.ops.monitor.why import explain
from miniflow.ops.polling import poll_until
from miniflow.persistence import RunRow
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import DefinitionError

from .steps_for_tests import GATES


def held(gate: str, concurrency: str, params: str = "") -> str:
    """A workflow of one step that waits for ``GATES[gate]``, with these limits."""
    return (f"name: limited\n{params}concurrency: {concurrency}\nsteps:\n"
            f"  - {{name: hold, task: test.gate, config: {{gate: {gate}}}}}\n")


def by_mode(gate: str, extra_step: str = "") -> str:
    """A workflow of one run at a time whose step waits for ``GATES[gate]`` when params.mode is
    'hold' (and is skipped otherwise), with ``extra_step`` beside it."""
    return (f"name: limited\nparams: {{mode: {{default: hold}}}}\nconcurrency: {{max_active_runs: 1}}\nsteps:\n"
            f"  - {{name: hold, task: test.gate, config: {{gate: {gate}}}, when: \"params.mode == 'hold'\"}}\n"
            + (f"  - {extra_step}\n" if extra_step else ""))


def runs_by_status(engine) -> dict[str, list[RunRow]]:
    with engine.db.connect() as conn:
        found = repo.list_runs(conn, limit=1000)
    by: dict[str, list[RunRow]] = {}
    for run in found:
        by.setdefault(str(run.status), []).append(run)
    return by


def most_at_once(runs: list[RunRow]) -> int:
    """The most runs that were running at one moment (an end counts before a begin at the same instant)."""
    events: list[tuple[datetime, int]] = []
    for run in runs:
        assert run.started_at is not None and run.finished_at is not None
        events += [(run.started_at, 1), (run.finished_at, -1)]
    level = most = 0
    for _, change in sorted(events):
        level += change
        most = max(most, level)
    return most


def opened(gate: str) -> None:
    GATES.setdefault(gate, threading.Event()).set()


def test_max_active_runs_2_with_10_starts_never_runs_more_than_2_and_ends_all_10(engine, caplog):
    gate = f"limit-{uuid.uuid4()}"
    engine.deploy(loads(held(gate, "{max_active_runs: 2}")))
    caplog.set_level(logging.INFO, "miniflow.actors")
    keys = [engine.submit("limited") for _ in range(10)]
    try:
        poll_until(lambda: len(runs_by_status(engine).get("queued", [])) == 8 or None, timeout=20)
        by = runs_by_status(engine)
        assert len(by["running"]) == 2 and len(by["queued"]) == 8
        said = {r.getMessage().split()[1]: r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")}
        assert all(said[run.id].endswith(" started") for run in by["running"])  # the handler says which
        assert all(said[run.id].endswith("queued: no room under its concurrency limits") for run in by["queued"])
        with engine.db.connect() as conn:  # nothing of a queued run is dispatched, and it has no deadline
            for run in by["queued"]:
                assert run.started_at is None and run.deadline_at is None
                assert {str(s.status) for s in repo.get_steps(conn, run.id).values()} == {"pending"}
        answer = explain(engine.db, Catalog(), engine.names, by["queued"][0].id, "hold", broker_url=None)
        assert answer.reasons == ["the run is queued for a slot of 'limited': max_active_runs: 2 of at most 2 "
                                  "runs are running"]
    finally:
        opened(gate)
    ended = [engine.wait(key, timeout=30) for key in keys]
    assert [r.status for r in ended] == ["succeeded"] * 10
    with engine.db.connect() as conn:
        rows = [repo.get_run(conn, r.run_id) for r in ended]
    assert most_at_once([r for r in rows if r is not None]) == 2


def test_a_limit_per_key_holds_one_run_per_customer_and_lets_other_customers_run(engine):
    gate = f"key-{uuid.uuid4()}"
    engine.deploy(loads(held(gate, "{key: params.customer, max_per_key: 1}", "params: {customer: {}}\n")))
    first, second, other = (engine.submit("limited", {"customer": c}) for c in ("acme", "acme", "globex"))
    try:
        poll_until(lambda: len(runs_by_status(engine).get("running", [])) == 2 or None, timeout=20)
        by = runs_by_status(engine)
        assert sorted(r.concurrency_key or "" for r in by["running"]) == ["acme", "globex"]
        assert [r.concurrency_key for r in by["queued"]] == ["acme"]
        answer = explain(engine.db, Catalog(), engine.names, by["queued"][0].id, "hold", broker_url=None)
        assert answer.reasons == ["the run is queued for a slot of 'limited': max_per_key: 1 of at most 1 runs "
                                  "with key 'acme' are running"]
    finally:
        opened(gate)
    results = [engine.wait(key, timeout=30) for key in (first, second, other)]
    assert all(r.status == "succeeded" for r in results)
    with engine.db.connect() as conn:
        a1, a2 = (repo.get_run(conn, r.run_id) for r in results[:2])
    assert a1 is not None and a2 is not None and a1.finished_at is not None and a2.started_at is not None
    assert a2.started_at >= a1.finished_at  # the second acme run began only once the first had ended


def test_queued_runs_begin_by_priority_then_age(engine):
    gate = f"prio-{uuid.uuid4()}"
    engine.deploy(loads(held(gate, "{max_active_runs: 1}")))
    holder = engine.submit("limited")
    try:
        poll_until(lambda: len(runs_by_status(engine).get("running", [])) == 1 or None, timeout=20)
        low = engine.submit("limited", priority=0)
        poll_until(lambda: len(runs_by_status(engine).get("queued", [])) == 1 or None, timeout=20)
        high = engine.submit("limited", priority=9)
        poll_until(lambda: len(runs_by_status(engine).get("queued", [])) == 2 or None, timeout=20)
    finally:
        opened(gate)
    done = {name: engine.wait(key, timeout=30) for name, key in (("holder", holder), ("low", low), ("high", high))}
    began = {}
    with engine.db.connect() as conn:
        for name, result in done.items():
            row = repo.get_run(conn, result.run_id)
            assert row is not None and row.started_at is not None
            began[name] = row.started_at
    assert began["holder"] < began["high"] < began["low"]


def test_a_queued_run_can_be_cancelled_and_the_others_go_on(engine):
    gate = f"cancel-{uuid.uuid4()}"
    engine.deploy(loads(held(gate, "{max_active_runs: 1}")))
    first = engine.submit("limited")
    second = engine.submit("limited")
    third = engine.submit("limited")
    try:
        poll_until(lambda: len(runs_by_status(engine).get("queued", [])) == 2 or None, timeout=20)
        with engine.db.connect() as conn:
            queued_id = repo.run_id_for_key(conn, second)
        assert queued_id is not None
        engine.cancel(queued_id, "not needed")
        cancelled = engine.wait(second, timeout=20)
    finally:
        opened(gate)
    assert cancelled.status == "cancelled" and [str(s.status) for s in cancelled.steps] == ["skipped"]
    assert cancelled.attempts == []
    assert engine.wait(first, timeout=30).status == "succeeded"
    assert engine.wait(third, timeout=30).status == "succeeded"


def test_a_retried_run_waits_for_a_slot_like_a_start(engine):
    gate = f"retry-{uuid.uuid4()}"
    engine.deploy(loads(by_mode(gate, "{name: flaky, task: test.flaky, config: {fail_times: 1}, "
                                      "when: \"params.mode == 'flaky'\"}")))
    failed = engine.wait(engine.submit("limited", {"mode": "flaky"}), timeout=20)
    assert failed.status == "failed"
    holder = engine.submit("limited", {"mode": "hold"})
    try:
        poll_until(lambda: len(runs_by_status(engine).get("running", [])) == 1 or None, timeout=20)
        engine.retry(failed.run_id)
        poll_until(lambda: (engine.run(failed.run_id) or failed).status == "queued" or None, timeout=20)
    finally:
        opened(gate)
    assert engine.wait(holder, timeout=30).status == "succeeded"
    poll_until(lambda: (engine.run(failed.run_id) or failed).status == "succeeded" or None, timeout=30)


def test_a_start_whose_params_do_not_give_the_key_is_rejected_naming_it(engine):
    engine.deploy(loads(held("unused", "{key: params.tenant.id}", "params: {tenant: {default: {}}}\n")))
    engine.submit("limited")

    def letters():
        with engine.db.connect() as conn:
            return repo.list_dead_letters(conn) or None

    [letter] = poll_until(letters, timeout=20)
    with engine.db.connect() as conn:
        assert repo.list_runs(conn) == []
    assert letter.code == "invalid_params"
    assert "its concurrency key `params.tenant.id` cannot be evaluated" in letter.detail


@pytest.mark.parametrize("concurrency,words", [
    ("{max_per_key: 2}", "max_per_key needs a key"),
    ("{}", "'concurrency' sets no limit"),
    ("{max_active_runs: 0}", "max_active_runs must be a whole number from 1 to 100000"),
    ("{max_active_runs: true}", "max_active_runs must be a whole number"),
    ("{max_runs: 2}", "unknown concurrency key(s) max_runs"),
    ("{key: 'inputs.a'}", "key reads 'inputs'; a key reads only params"),
    ("{key: 'params.token'}", "key reads the secret param 'token'"),
    ("{key: 'str(params)'}", "key reads params as a whole, and the workflow has secret params"),
    ("[2]", "'concurrency' must be a mapping"),
])
def test_concurrency_is_checked_when_the_workflow_is_read(concurrency: str, words: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        loads(held("g", concurrency, "params: {token: {secret: true}, customer: {}}\n"))
    assert words in str(caught.value)


def test_a_workflow_without_limits_keeps_its_stored_form_and_limits_round_trip() -> None:
    plain = "name: w\nsteps:\n  - {name: a, task: test.echo}\n"
    assert "concurrency" not in loads(plain).to_spec()
    limited = loads(held("g", "{max_active_runs: 3, key: params.customer}", "params: {customer: {}}\n"))
    assert limited.to_spec()["concurrency"] == {"max_active_runs": 3, "key": "params.customer", "max_per_key": 1}
    from miniflow.coordinator.workflow import Workflow

    assert Workflow.from_spec(limited.to_spec()).concurrency == limited.concurrency


def test_queued_runs_that_end_as_soon_as_they_begin_are_each_begun_once(engine):
    """A run whose roots are all skipped ends inside the pass that begins it; its end must not
    begin the other queued runs a second time."""
    gate = f"instant-{uuid.uuid4()}"
    engine.deploy(loads(by_mode(gate)))
    holder = engine.submit("limited", {"mode": "hold"})
    try:
        poll_until(lambda: len(runs_by_status(engine).get("running", [])) == 1 or None, timeout=20)
        instant = [engine.submit("limited", {"mode": "skip"}) for _ in range(3)]
        held_too = engine.submit("limited", {"mode": "hold"})
        poll_until(lambda: len(runs_by_status(engine).get("queued", [])) == 4 or None, timeout=20)
    finally:
        opened(gate)
    results = [engine.wait(key, timeout=30) for key in [holder, *instant, held_too]]
    assert [r.status for r in results] == ["succeeded"] * 5
    last = results[-1]
    assert [(a.step, a.attempt) for a in last.attempts] == [("hold", 1)]  # dispatched once, not twice
    with engine.db.connect() as conn:
        rows = [repo.get_run(conn, r.run_id) for r in results]
    assert most_at_once([r for r in rows if r is not None]) == 1
