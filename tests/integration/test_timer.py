"""The cron timer on the real RabbitMQ and Postgres: several `miniflow timer` processes, killed,
stopped and racing; one run per tick; catch-up and overlap policies honoured."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import TimerProcess, miniflow, poll, query

SLOW_YAML = """\
name: timer-slow
steps:
  - {name: nap, task: demo.sleep, config: {seconds: 2.5}}
"""
STARTED = ("fired", "caught_up", "manual")


@pytest.fixture
def start_timers(cluster: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[TimerProcess] = []

    def start(count: int) -> list[TimerProcess]:
        timers = [TimerProcess(cluster, tmp_path / f"timer{len(started) + i}.log") for i in range(count)]
        started.extend(timers)
        for t in timers:
            t.wait_ready()
        return timers

    try:
        yield start
    finally:
        for t in started:
            t.stop()


def add_schedule(env: dict[str, str], name: str, workflow: str, *extra: str) -> str:
    result = miniflow(env, "schedules", "add", name, "--workflow", workflow, "--cron", "* * * * * *", "--json",
                      *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    return str(json.loads(result.stdout)[0]["id"])


def pause(env: dict[str, str], name: str) -> None:
    result = miniflow(env, "schedules", "pause", name)
    assert result.returncode == 0, result.stderr


def ticks(db: str, schedule_id: str) -> list[tuple[Any, ...]]:
    return query(db, "select due_at, outcome, idempotency_key, detail from schedule_ticks "
                     "where schedule_id = %s and kind = 'cron' order by due_at", schedule_id)


def assert_one_run_per_started_tick(db: str, schedule_id: str) -> list[tuple[Any, ...]]:
    """Every started tick has exactly one run; no run without a started tick. Returns the runs."""
    started = [r[2] for r in query(db, "select due_at, outcome, idempotency_key from schedule_ticks where "
                                       "schedule_id = %s and outcome in %s", schedule_id, STARTED)]

    def all_created() -> list[tuple[Any, ...]] | None:
        rows = query(db, "select idempotency_key, id, status, created_at, finished_at from runs "
                         "where idempotency_key like %s", f"schedule:{schedule_id}:%")
        return rows if len(rows) >= len(started) else None

    runs: list[tuple[Any, ...]] = poll(all_created, timeout=30, what="a run for every started tick")
    assert Counter(r[0] for r in runs) == Counter(started)
    return runs


def test_three_timers_fire_each_tick_of_a_per_second_schedule_exactly_once(cluster, start_timers):
    db = cluster["MINIFLOW_DATABASE_URL"]
    start_timers(3)
    sid = add_schedule(cluster, f"race-{uuid.uuid4().hex[:6]}", "diamond", "--grace", "5")
    poll(lambda: len(ticks(db, sid)) >= 60, timeout=90, interval=0.5, what="60 ticks (a minute)")
    pause(cluster, query(db, "select name from schedules where id = %s", sid)[0][0])
    rows = ticks(db, sid)
    dues = [r[0] for r in rows]
    assert len(dues) == len(set(dues))
    assert all((b - a).total_seconds() == 1 for a, b in zip(dues, dues[1:], strict=False)), dues
    assert {r[1] for r in rows} == {"fired"}
    runs = assert_one_run_per_started_tick(db, sid)
    nodes = query(db, "select count(distinct node) from schedule_ticks where schedule_id = %s", sid)[0][0]
    assert nodes >= 1 and len(runs) == len(rows)


def test_a_killed_and_a_stopped_timer_leave_no_duplicate_and_the_catch_up_policy_runs_the_latest(
        cluster, start_timers):
    db = cluster["MINIFLOW_DATABASE_URL"]
    first, second = start_timers(2)
    name = f"faults-{uuid.uuid4().hex[:6]}"
    sid = add_schedule(cluster, name, "diamond", "--catch-up", "all", "--catch-up-limit", "2", "--grace", "1")
    poll(lambda: len(ticks(db, sid)) >= 3, timeout=30, interval=0.2, what="the first ticks")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    poll(lambda: len(ticks(db, sid)) >= 6, timeout=30, interval=0.2, what="ticks fired by the survivor")
    os.kill(second.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(5)  # the fault itself: no timer runs for five ticks (not a synchronisation)
    finally:
        os.kill(second.proc.pid, signal.SIGCONT)
    before = len(ticks(db, sid))
    poll(lambda: len(ticks(db, sid)) >= before + 8, timeout=30, interval=0.2, what="ticks after SIGCONT")
    pause(cluster, name)
    rows = ticks(db, sid)
    dues = [r[0] for r in rows]
    assert len(dues) == len(set(dues))
    assert all((b - a).total_seconds() == 1 for a, b in zip(dues, dues[1:], strict=False)), "a tick has no row"
    outcomes = [r[1] for r in rows]
    assert outcomes.count("missed") >= 2, outcomes
    # every block of late ticks: missed ones, then its latest (at most 2) caught up
    blocks: list[list[str]] = [[]]
    for outcome in outcomes:
        if outcome == "fired":
            blocks.append([])
        else:
            blocks[-1].append(outcome)
    for block in (b for b in blocks if b):
        caught = block.count("caught_up")
        assert caught == min(2, len(block)) and block[len(block) - caught:] == ["caught_up"] * caught, outcomes
    assert_one_run_per_started_tick(db, sid)


def test_each_overlap_policy_with_a_slow_workflow(cluster, start_timers, tmp_path):
    db = cluster["MINIFLOW_DATABASE_URL"]
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_YAML)
    result = miniflow(cluster, "deploy", str(path))
    assert result.returncode == 0, result.stderr
    start_timers(2)
    suffix = uuid.uuid4().hex[:6]
    ids = {policy: add_schedule(cluster, f"ov-{policy}-{suffix}", "timer-slow", "--overlap", policy,
                                "--grace", "5")
           for policy in ("allow", "skip", "buffer_one", "cancel_running")}
    poll(lambda: all(len(ticks(db, sid)) >= 8 for sid in ids.values()), timeout=40, interval=0.5,
         what="8 ticks of every schedule")
    for policy in ids:
        pause(cluster, f"ov-{policy}-{suffix}")
    # let the last runs end, and the buffered tick start (a timer pass, up to a second after the run
    # it waited for ended) and end too, then check
    def settled() -> bool:
        running = query(db, "select 1 from runs where workflow = 'timer-slow' and status = 'running'")
        held = query(db, "select 1 from schedule_ticks where schedule_id = %s and outcome = 'buffered'",
                     ids["buffer_one"])
        return not running and not held

    poll(settled, timeout=60, interval=0.5, what="the slow runs to end and the buffered tick to start")
    for policy, sid in ids.items():
        outcomes = Counter(r[1] for r in ticks(db, sid))
        runs = sorted(assert_one_run_per_started_tick(db, sid), key=lambda r: r[3])
        overlapping = sum(1 for a, b in zip(runs, runs[1:], strict=False) if b[3] < a[4])
        if policy == "allow":
            assert outcomes.keys() == {"fired"} and overlapping >= 1
        elif policy == "skip":
            assert outcomes["skipped_overlap"] >= 3 and overlapping == 0, outcomes
        elif policy == "buffer_one":
            buffered = query(db, "select count(*) from schedule_ticks where schedule_id = %s and "
                                 "detail like 'buffered%%'", sid)[0][0]
            assert buffered >= 1 and outcomes["skipped_overlap"] >= 1 and overlapping == 0, outcomes
            assert outcomes["buffered"] == 0  # the buffered tick was started once the runs ended
        else:
            statuses = Counter(r[2] for r in runs)
            assert statuses["cancelled"] >= 2 and outcomes.keys() == {"fired"}, (statuses, outcomes)


def test_schedules_cli_shows_next_fires_and_rejects_bad_input_with_exit_2(cluster):
    result = miniflow(cluster, "schedules", "add", "bad", "--workflow", "diamond", "--cron", "0 0 31 2 *")
    assert result.returncode == 2 and "never fires" in result.stderr
    result = miniflow(cluster, "schedules", "add", "bad", "--workflow", "diamond", "--cron", "* * * * *",
                      "--tz", "Mars/Base")
    assert result.returncode == 2 and "unknown timezone" in result.stderr
    name = f"cli-{uuid.uuid4().hex[:6]}"
    result = miniflow(cluster, "schedules", "add", name, "--workflow", "diamond", "--cron", "30 2 * * *",
                      "--tz", "Europe/Berlin", "--paused")
    assert result.returncode == 0, result.stderr
    result = miniflow(cluster, "schedules", "resume", name)
    assert result.returncode == 0, result.stderr
    shown = json.loads(miniflow(cluster, "schedules", "show", name, "--json").stdout)
    assert len(shown["next_fires"]) == 5 and shown["paused"] is False
    assert miniflow(cluster, "schedules", "trigger", name).returncode == 0
    db = cluster["MINIFLOW_DATABASE_URL"]
    assert_one_run_per_started_tick(db, shown["id"])
    assert [t["outcome"] for t in json.loads(miniflow(cluster, "schedules", "show", name, "--json").stdout)
            ["ticks"]] == ["manual"]
    assert miniflow(cluster, "schedules", "delete", name).returncode == 0
    assert miniflow(cluster, "schedules", "show", name).returncode == 2
