"""The timer on the embedded engine (StubBroker + SQLite) with an injected clock."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from miniflow.actors.metrics import Metrics
from miniflow.actors.timer import Timer
from miniflow.coordinator import Scheduler, ScheduleSpec, load_schedules_file, parse
from miniflow.coordinator.schedule_policy import CatchUp, TickOutcome
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.persistence import TickRow
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import schedules as srepo
from miniflow.protocol.errors import DefinitionError

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
DIAMOND = parse({"name": "diamond", "params": {"x": {"default": 3}}, "steps": [
    {"name": "a", "task": "diamond.source"}, {"name": "b", "task": "diamond.double", "needs": ["a"]}]})
SLOW = parse({"name": "slow", "steps": [{"name": "nap", "task": "demo.sleep", "config": {"seconds": 0.5}}]})


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += timedelta(seconds=seconds)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EmbeddedEngine]:
    eng = EmbeddedEngine(f"sqlite:///{tmp_path / 'timer.db'}", threads=4)
    eng.start()
    eng.deploy(DIAMOND)
    eng.deploy(SLOW)
    try:
        yield eng
    finally:
        eng.stop()


def add(engine: EmbeddedEngine, now: datetime, **kwargs: object) -> str:
    values: dict[str, object] = {"name": "s", "workflow": "diamond", "cron": "* * * * * *"}
    values.update(kwargs)
    with engine.db.transaction() as conn:
        row, _ = Scheduler(engine.names).add(conn, ScheduleSpec(**values), now)  # type: ignore[arg-type]
    return str(row.id)


def ledger(engine: EmbeddedEngine, schedule_id: str) -> list[TickRow]:
    with engine.db.connect() as conn:
        return srepo.all_ticks(conn, schedule_id)


def runs_by_key(engine: EmbeddedEngine, keys: list[str], timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        with engine.db.connect() as conn:
            found = {k: repo.run_id_for_key(conn, k) for k in keys}
        if all(found.values()) or time.monotonic() > deadline:
            return {k: v for k, v in found.items() if v}
        time.sleep(0.02)


def test_two_timers_racing_on_one_database_fire_each_tick_exactly_once(engine):
    clock = Clock(T0)
    sid = add(engine, T0)
    timers = [Timer(engine.db, engine.broker, engine.names, clock=clock, node=f"t{i}") for i in range(2)]
    for _ in range(10):
        clock.advance(1)
        threads = [threading.Thread(target=t.run_once) for t in timers for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    rows = ledger(engine, sid)
    assert [r.due_at for r in rows] == [T0 + timedelta(seconds=s) for s in range(1, 11)]
    assert {r.outcome for r in rows} == {TickOutcome.FIRED}
    keys = [str(r.idempotency_key) for r in rows]
    assert len(runs_by_key(engine, keys)) == 10
    engine.settle()
    with engine.db.connect() as conn:
        scheduled = [r for r in repo.list_runs(conn, limit=100) if r.idempotency_key.startswith("schedule:")]
    assert Counter(r.idempotency_key for r in scheduled) == Counter(keys)
    assert sum(t.fired for t in timers) == 10


@pytest.mark.parametrize("policy,limit,expected", [
    ("skip", 1, [TickOutcome.MISSED] * 5),
    ("latest", 1, [TickOutcome.MISSED] * 4 + [TickOutcome.CAUGHT_UP]),
    ("all", 3, [TickOutcome.MISSED] * 2 + [TickOutcome.CAUGHT_UP] * 3),
])
def test_ticks_missed_while_no_timer_ran_follow_the_catch_up_policy(engine, policy, limit, expected):
    clock = Clock(T0)
    sid = add(engine, T0, cron="* * * * *", catch_up=CatchUp(policy, limit, 30))
    clock.advance(5 * 60 + 40)  # five minute ticks were due; the timer was down for all of them
    metrics = Metrics("timer", "test")
    timer = Timer(engine.db, engine.broker, engine.names, clock=clock, metrics=metrics)
    timer.run_once()
    timer.run_once()  # a second pass finds nothing new
    rows = ledger(engine, sid)
    assert [r.outcome for r in rows] == expected
    # one pass fired the schedule, 4 min 40 s after its first missed tick was due: that is its lateness
    assert metrics.registry.get_sample_value("miniflow_cron_fire_lateness_seconds_count") == 1
    assert metrics.registry.get_sample_value("miniflow_cron_fire_lateness_seconds_sum") == pytest.approx(280, abs=1)
    assert [r.due_at for r in rows] == [T0 + timedelta(minutes=m) for m in range(1, 6)]
    started = [str(r.idempotency_key) for r in rows if r.outcome == TickOutcome.CAUGHT_UP]
    assert len(runs_by_key(engine, started)) == len(started)
    with engine.db.connect() as conn:
        schedule = srepo.get_schedule(conn, "s")
    assert schedule is not None and schedule.next_due_at == T0 + timedelta(minutes=6)


def test_a_long_outage_is_recorded_in_bounded_batches_and_the_latest_tick_still_runs(engine):
    clock = Clock(T0)
    sid = add(engine, T0, catch_up=CatchUp("latest", 1, 5))
    clock.advance(2500)
    Timer(engine.db, engine.broker, engine.names, clock=clock).run_once()
    rows = ledger(engine, sid)
    assert len(rows) == 2500
    # ticks up to 5 s late (grace) are on time: they fire, so "latest" has nothing late to run
    assert Counter(r.outcome for r in rows) == Counter({TickOutcome.MISSED: 2494, TickOutcome.FIRED: 6})
    assert rows[-1].outcome == TickOutcome.FIRED


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(engine):
    clock = Clock(T0)
    sid = add(engine, T0)
    timer = Timer(engine.db, engine.broker, engine.names, clock=clock)
    clock.advance(2)
    timer.run_once()
    with engine.db.transaction() as conn:
        Scheduler(engine.names).pause(conn, "s", clock())
    clock.advance(5)
    timer.run_once()
    assert len(ledger(engine, sid)) == 2
    with engine.db.transaction() as conn:
        due = Scheduler(engine.names).resume(conn, "s", clock())
    assert due == T0 + timedelta(seconds=8)
    clock.advance(1)
    timer.run_once()
    assert [r.due_at for r in ledger(engine, sid)][-1] == T0 + timedelta(seconds=8)


def test_the_window_end_stops_the_schedule(engine):
    clock = Clock(T0)
    sid = add(engine, T0, end=T0 + timedelta(seconds=3))
    clock.advance(10)
    Timer(engine.db, engine.broker, engine.names, clock=clock).run_once()
    assert len(ledger(engine, sid)) == 3
    with engine.db.connect() as conn:
        schedule = srepo.get_schedule(conn, "s")
    assert schedule is not None and schedule.next_due_at is None


def test_overlap_skip_records_ticks_that_come_while_the_previous_run_is_going(engine):
    clock = Clock(T0)
    sid = add(engine, T0, workflow="slow", overlap="skip")
    timer = Timer(engine.db, engine.broker, engine.names, clock=clock)
    clock.advance(1)
    timer.run_once()
    clock.advance(1)
    timer.run_once()  # the first run sleeps 0.5 s (or its start is still in flight)
    outcomes = [r.outcome for r in ledger(engine, sid)]
    assert outcomes == [TickOutcome.FIRED, TickOutcome.SKIPPED_OVERLAP]


def test_a_manual_trigger_fires_once_with_a_manual_marker(engine):
    sid = add(engine, T0, cron="0 0 1 1 *")
    with engine.db.transaction() as conn:
        key, outgoing = Scheduler(engine.names).trigger(conn, "s", T0)
    Timer(engine.db, engine.broker, engine.names).relay.publish(outgoing)
    assert [r.outcome for r in ledger(engine, sid)] == [TickOutcome.MANUAL]
    assert runs_by_key(engine, [key])


def test_adding_a_schedule_checks_the_workflow_and_its_params(engine):
    with pytest.raises(DefinitionError, match="not deployed"):
        add(engine, T0, workflow="nope")
    with pytest.raises(DefinitionError, match="has no param"):
        add(engine, T0, params={"y": 1})
    add(engine, T0)
    with pytest.raises(DefinitionError, match="already exists"):
        add(engine, T0)


def test_schedules_are_read_from_a_workflow_file(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("name: diamond\nsteps: [{name: a, task: diamond.source}]\nschedules:\n"
                    "  - {name: nightly, cron: '30 2 * * *', timezone: Europe/Berlin, params: {x: 2},\n"
                    "     catch_up: {policy: all, limit: 3}, overlap: buffer_one, jitter: 10, priority: 4}\n")
    [spec] = load_schedules_file(path)
    assert (spec.name, spec.workflow, spec.cron, spec.timezone, spec.overlap, spec.priority) == (
        "nightly", "diamond", "30 2 * * *", "Europe/Berlin", "buffer_one", 4)
    assert spec.catch_up == CatchUp("all", 3, 60.0) and spec.params == {"x": 2} and spec.jitter_s == 10
    path.write_text("name: diamond\nsteps: []\nschedules:\n  - {name: x, cron: '0 0 31 2 *'}\n")
    [impossible] = load_schedules_file(path)
    assert impossible.cron == "0 0 31 2 *"  # syntax is fine; `add` reports that it never fires
