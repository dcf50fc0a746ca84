"""The monitors in the embedded mode (SQLite, the in-process broker): heartbeats and the workers
registry, metrics counted by a real engine and served over HTTP, and "why isn't it running"."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from miniflow.actors.heartbeat import GONE, LATE, LATE_AFTER, Heartbeat, broker_sender, row_of, state_of
from miniflow.actors.metrics import MAX_SERIES, NULL, OTHER, Metrics, ScrapeGauges, serve
from miniflow.coordinator import Catalog, loads
from miniflow.ops.cli.monitor import parse_window
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.monitor.why import explain
from miniflow.ops.monitor.workers import list_workers
from miniflow.ops.polling import poll_until
from miniflow.persistence import Database, RunRow, StepRow
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import workers as wrepo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError, MessageRejected
from miniflow.protocol.messages import WorkerHeartbeat
from miniflow.protocol.names import QueueNames
from miniflow.protocol.states import RunStatus, StepStatus

FAILING = "name: mon-fail\nsteps:\n  - {name: boom, task: test.boom, retries: 1, backoff: {initial: 0.01}}\n"
PASSING = "name: mon-ok\nsteps:\n  - {name: a, task: test.echo}\n  - {name: b, task: test.echo, needs: [a]}\n"


def _beat(**over: Any) -> WorkerHeartbeat:
    values: dict[str, Any] = dict(node="host:1", kind="worker", roles=["executor"], queues=["miniflow.steps"],
                                  threads=4, pid=1, version="0.1.0", started_at=1_800_000_000.0, interval_s=1.0,
                                  beat=1, busy=0, running=[], stopping=False)
    values.update(over)
    return WorkerHeartbeat(**values)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


# -- heartbeats and the registry ------------------------------------------------------------------------
def test_a_late_heartbeat_never_overwrites_a_newer_one_nor_revives_a_stopped_worker(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    db.upgrade()
    now = utcnow()
    with db.transaction() as conn:
        assert wrepo.record_heartbeat(conn, row_of(_beat(beat=2, busy=3), "miniflow", now))
        assert not wrepo.record_heartbeat(conn, row_of(_beat(beat=1, busy=9), "miniflow", now))  # older: ignored
        assert wrepo.record_heartbeat(conn, row_of(_beat(beat=3, stopping=True), "miniflow", now))
        assert not wrepo.record_heartbeat(conn, row_of(_beat(beat=2), "miniflow", now))
        restarted = _beat(beat=1, started_at=1_800_000_100.0)  # the same node name, a new process
        rows = wrepo.list_workers(conn, namespace="miniflow")
        assert rows[0].stopped_at is not None and rows[0].busy == 0 and rows[0].beat == 3
        assert wrepo.record_heartbeat(conn, row_of(restarted, "miniflow", now))
        rows = wrepo.list_workers(conn, namespace="miniflow")
        assert rows[0].stopped_at is None and rows[0].beat == 1
    db.dispose()


def test_state_is_alive_late_gone_or_stopped_by_the_silence_against_the_promised_interval() -> None:
    now = utcnow()
    row = row_of(_beat(interval_s=2.0), "miniflow", now)
    assert state_of(row, now + timedelta(seconds=LATE_AFTER * 2.0)) == "alive"
    assert state_of(row, now + timedelta(seconds=LATE_AFTER * 2.0 + 0.1)) == LATE
    assert state_of(row, now + timedelta(seconds=12.1)) == GONE
    assert state_of(row_of(_beat(stopping=True), "miniflow", now), now + timedelta(days=1)) == "stopped"


@pytest.mark.parametrize(("field", "value", "named"), [
    ("kind", "robot", "kind"),
    ("roles", ["x" * 17], "roles"),
    ("queues", [""], "queues"),
    ("running", [{"run_id": "r", "step": "s", "attempt": 0, "since": 1_800_000_000}], "running"),
    ("running", [{"run_id": "r", "step": "s"}], "running"),
    ("interval_s", 0.0, "interval_s"),
    ("node", "", "node"),
])
def test_a_heartbeat_out_of_bounds_is_rejected_naming_the_field(field: str, value: Any, named: str) -> None:
    payload = _beat().to_payload()
    payload[field] = value
    with pytest.raises(MessageRejected) as rejected:
        WorkerHeartbeat.from_payload(payload)
    assert rejected.value.field == named


def test_the_heartbeat_loop_survives_a_failing_sender_and_says_stopping_last() -> None:
    sent: list[WorkerHeartbeat] = []
    failing = [True]

    def send(beat: WorkerHeartbeat) -> None:
        if failing[0]:
            raise OSError("unreachable")
        sent.append(beat)

    heart = Heartbeat(send, node="n:1", kind="worker", roles=["executor"], queues={"b", "a"}, threads=2,
                      status=lambda: (1, [{"run_id": "r", "step": "s", "attempt": 1, "since": 1_800_000_000.0}]))
    assert heart.beat_once() is False  # logged once, never raised
    failing[0] = False
    assert heart.beat_once() is True
    heart.stop()
    assert [b.beat for b in sent] == [2, 3] and sent[0].queues == ["a", "b"] and sent[0].busy == 1
    assert sent[-1].stopping and sent[-1].running == [] and sent[-1].busy == 0


# -- metrics and heartbeats through a real (embedded) engine --------------------------------------------------
def test_an_engine_counts_runs_attempts_retries_and_records_heartbeats_sent_over_its_broker(tmp_path: Path) -> None:
    metrics = Metrics("worker", "test")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with EmbeddedEngine(url, threads=2, metrics=metrics) as engine:
        engine.deploy(loads(FAILING))
        engine.deploy(loads(PASSING))
        ok = [engine.submit("mon-ok", {}) for _ in range(2)]
        bad = engine.submit("mon-fail", {})
        assert [engine.wait(r, timeout=60).status for r in ok] == ["succeeded"] * 2
        assert engine.wait(bad, timeout=60).status == "failed"
        send = broker_sender(engine.broker, engine.names)
        send(_beat(node="far-executor:7", running=[{"run_id": "r1", "step": "s", "attempt": 1,
                                                  "since": 1_800_000_000.0}]))

        def recorded() -> list[Any]:
            return [v for v in list_workers(engine.db, "miniflow") if v.node == "far-executor:7"]

        found = poll_until(lambda: recorded() or None, timeout=30,
                           what="the heartbeat sent over the broker to be recorded")
    assert found[0].state in ("alive", "late", "gone") and found[0].running[0]["run_id"] == "r1"
    samples = _samples(_expose(metrics))
    assert samples[("miniflow_runs_started_total", (("workflow", "mon-ok"),))] == 2
    assert samples[("miniflow_runs_finished_total", (("status", "failed"), ("workflow", "mon-fail")))] == 1
    assert samples[("miniflow_step_attempts_total", (("outcome", "failed"), ("step", "boom"),
                                                     ("workflow", "mon-fail")))] == 2
    assert samples[("miniflow_step_retries_total", (("step", "boom"), ("workflow", "mon-fail")))] == 1
    assert samples[("miniflow_step_duration_seconds_count", (("step", "b"), ("workflow", "mon-ok")))] == 2
    assert samples[("miniflow_messages_total", (("actor", "worker_heartbeat"), ("outcome", "ok")))] == 1


def _expose(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_label_sets_are_bounded_and_report_reasons_only_known_codes() -> None:
    metrics = Metrics("worker", "test")
    metrics.archives_dead_letters()
    for i in range(MAX_SERIES + 5):
        metrics.run_started(f"wf-{i}")
    metrics.dead_letter("made-up-by-a-forger")
    samples = _samples(_expose(metrics))
    started = {dict(k[1])["workflow"]: v for k, v in samples.items() if k[0] == "miniflow_runs_started_total"}
    assert len(started) == MAX_SERIES + 1 and started[OTHER] == 5
    assert samples[("miniflow_dead_letters_total", (("reason", OTHER),))] == 1
    assert samples[("miniflow_dead_letters_total", (("reason", "malformed"),))] == 0  # there from the start
    assert samples[("miniflow_reconnects_total", (("service", "broker"),))] == 0
    NULL.run_started("x")  # off: does nothing, raises nothing
    assert NULL.enabled is False


def test_scrape_time_gauges_are_cached_and_a_failing_read_gives_none_instead_of_a_failed_scrape() -> None:
    now = [0.0]
    reads: list[int] = []

    def read() -> dict[str, list[tuple[dict[str, str], float]]]:
        reads.append(1)
        if len(reads) == 2:
            raise RuntimeError("database away")
        return {"miniflow_workers": [({"state": "alive"}, float(len(reads)))]}

    metrics = Metrics("api", "test")
    metrics.add_collector(ScrapeGauges(read, max_age_s=5.0, clock=lambda: now[0]))
    assert _samples(_expose(metrics))[("miniflow_workers", (("state", "alive"),))] == 1
    now[0] = 4.0
    assert _samples(_expose(metrics))[("miniflow_workers", (("state", "alive"),))] == 1 and len(reads) == 1
    now[0] = 10.0
    assert ("miniflow_workers", (("state", "alive"),)) not in _samples(_expose(metrics))
    now[0] = 20.0
    assert _samples(_expose(metrics))[("miniflow_workers", (("state", "alive"),))] == 3


def test_metrics_are_served_over_http_for_a_scraper() -> None:
    metrics = Metrics("worker", "test")
    metrics.threads(3)
    server = serve(metrics, 0, host="127.0.0.1")
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = _samples(answer.text)
    assert samples[("miniflow_worker_threads", ())] == 3
    assert samples[("miniflow_build_info", (("kind", "worker"), ("version", "test")))] == 1


# -- why isn't it running ---------------------------------------------------------------------------------
WHY = """name: why
steps:
  - {name: first, task: t.a, queue: gpu}
  - {name: second, task: t.b, needs: [first], queue: gpu}
  - {name: third, task: t.c, retries: 3, backoff: {initial: 30, max: 60}}
"""


def _run(conn: Any, workflow: str, version: int, steps: list[StepRow]) -> str:
    run_id = str(uuid.uuid4())
    repo.insert_run(conn, RunRow(id=run_id, workflow=workflow, version=version, status=RunStatus.RUNNING, params={},
                                 idempotency_key=run_id, priority=0, created_at=utcnow()))
    repo.insert_steps(conn, [replace(s, run_id=run_id) for s in steps])
    return run_id


def test_why_names_the_queue_nobody_consumes_the_steps_ahead_the_needs_and_the_backoff(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    db.upgrade()
    catalog = Catalog()
    names = QueueNames("miniflow")
    now = utcnow()
    with db.transaction() as conn:
        version, _ = catalog.deploy(conn, loads(WHY))
        early = _run(conn, "why", version, [
            StepRow("", "first", StepStatus.QUEUED, attempt=1, queued_at=now - timedelta(seconds=60)),
            StepRow("", "second", StepStatus.PENDING),
            StepRow("", "third", StepStatus.QUEUED, attempt=2, queued_at=now - timedelta(seconds=1))])
        late = _run(conn, "why", version, [
            StepRow("", "first", StepStatus.QUEUED, attempt=1, queued_at=now - timedelta(seconds=10)),
            StepRow("", "second", StepStatus.PENDING), StepRow("", "third", StepStatus.PENDING)])
    first = explain(db, catalog, names, early, "first", broker_url=None, now=now)
    assert first.queue == "miniflow.steps.gpu" and first.ahead == 0 and first.waiting_s == 60
    assert "no executor consumes miniflow.steps.gpu" in first.reasons[0] and "--queue gpu" in first.reasons[0]
    second_run = explain(db, catalog, names, late, "first", broker_url=None, now=now)
    assert second_run.ahead == 1 and any("1 step(s) of miniflow.steps.gpu were queued before it" in r
                                         for r in second_run.reasons)
    pending = explain(db, catalog, names, early, "second", broker_url=None, now=now)
    assert pending.reasons == ["it waits for the step(s) it needs: first"] and pending.needs_waiting == ["first"]
    retry = explain(db, catalog, names, early, "third", broker_url=None, now=now)
    assert retry.queue == "miniflow.steps" and "attempt 2 is a retry: it waits its backoff" in retry.reasons[0]
    assert "miniflow.steps.DQ" in retry.reasons[0]
    with pytest.raises(ConfigError, match="has no step 'nope'"):
        explain(db, catalog, names, early, "nope", broker_url=None)
    with pytest.raises(ConfigError, match="no run"):
        explain(db, catalog, names, "missing", "first", broker_url=None)
    db.dispose()


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("1.5d", 129600)])
def test_windows_are_read_with_their_unit(text: str, seconds: float) -> None:
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["1w", "h", "-1h", "0s", "400d"])
def test_a_bad_window_is_refused_by_name(text: str) -> None:
    with pytest.raises(ConfigError, match="window"):
        parse_window(text)
