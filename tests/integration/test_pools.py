"""Slots of a step pool on real RabbitMQ and Postgres with two coordinators and an executor of the
pool with more threads than slots: both coordinators take the pool's row before they admit, so
the limit holds across processes, and every waiting step is dispatched in the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WorkerProcess, miniflow, own_namespace, query

WIDE = "name: pool-wide\nsteps:\n" + "".join(
    f"  - {{name: s{i}, task: test.sleep, queue: narrow, config: {{seconds: 0.3}}}}\n" for i in range(8))


@pytest.fixture
def space(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    with own_namespace(env, "pool") as own:
        workers = [
            WorkerProcess(own, ["--role", "coordinator", "--role", "results", "--threads", "4"], tmp_path / "c1.log"),
            WorkerProcess(own, ["--role", "coordinator", "--role", "results", "--threads", "4"], tmp_path / "c2.log"),
            WorkerProcess(own, ["--steps", "tests.steps_for_tests", "--queue", "narrow", "--threads", "8"],
                          tmp_path / "exec.log"),
        ]
        try:
            for w in workers:
                w.wait_ready()
            yield own
        finally:
            for w in workers:
                w.stop()
            miniflow(own, "pools", "set", "narrow", "--unlimited")


def test_a_pool_of_three_slots_holds_across_two_coordinators_and_every_step_runs(space, tmp_path: Path):
    db = space["MINIFLOW_DATABASE_URL"]
    (tmp_path / "wide.yaml").write_text(WIDE)
    assert miniflow(space, "deploy", str(tmp_path / "wide.yaml")).returncode == 0
    assert miniflow(space, "pools", "set", "narrow", "--slots", "3").returncode == 0
    keys = [f"pool-{uuid.uuid4()}" for _ in range(4)]
    for key in keys:
        assert miniflow(space, "start", "pool-wide", "--key", key).returncode == 0
    marks = ",".join(["%s"] * len(keys))

    def ended() -> bool:
        rows = query(db, f"select status from runs where idempotency_key in ({marks})", *keys)
        return len(rows) == 4 and all(status == "succeeded" for (status,) in rows)

    peak = 0
    while True:
        peak = max(peak, query(db, "select count(*) from run_steps where pool = 'narrow' and status = 'queued'")[0][0])
        if ended():
            break
    assert peak == 3, f"at most 3 at once, and the pool full at some point (peak {peak})"
    spans = query(db, f"select a.started_at, a.finished_at from step_attempts a join runs r on r.id = a.run_id "
                  f"where r.idempotency_key in ({marks})", *keys)
    assert len(spans) == 32
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    level = most = 0
    for _, change in events:
        level += change
        most = max(most, level)
    assert most <= 3, f"{most} steps of the pool ran at once"
    listed = miniflow(space, "pools", "list", "--json")
    assert '"in_use": 0' in listed.stdout and '"waiting": 0' in listed.stdout
