"""Priorities on RabbitMQ: on a busy pool, the steps of priority-9 runs overtake a backlog of
priority-0 steps (a run's priority is the broker priority of its step messages and results)."""

from __future__ import annotations

from pathlib import Path

from miniflow.ops.client import Client

from .conftest import WorkerProcess, miniflow, poll, query

LOW, HIGH = 16, 3
WORKFLOW = """name: prio-nap
steps:
  - {name: nap, task: demo.sleep, queue: prio, config: {seconds: 0.15}}
"""


def test_priority_9_steps_overtake_a_backlog_of_priority_0_steps_on_a_busy_pool(cluster: dict[str, str],
                                                                               tmp_path: Path) -> None:
    (tmp_path / "prio.yaml").write_text(WORKFLOW)
    assert miniflow(cluster, "deploy", str(tmp_path / "prio.yaml")).returncode == 0
    db = cluster["MINIFLOW_DATABASE_URL"]
    pool = WorkerProcess(cluster, ["--steps", "examples.steps", "--queue", "prio", "--threads", "1"],
                         tmp_path / "pool.log")
    try:
        pool.wait_ready()
        with Client.from_env(cluster) as client:
            low = [client.start("prio-nap", key=f"{tmp_path.name}-low-{i}", priority=0) for i in range(LOW)]
            poll(lambda: query(db, "select count(*) from step_attempts a join runs r on r.id = a.run_id where "
                               "r.idempotency_key like %s", f"{tmp_path.name}-low-%")[0][0] > 0,
                 timeout=60, what="the first low-priority step to finish (the rest wait: a backlog)")
            high = [client.start("prio-nap", key=f"{tmp_path.name}-high-{i}", priority=9) for i in range(HIGH)]
            ended = {h.idempotency_key: h.wait(timeout=120) for h in low + high}
        assert all(r.status == "succeeded" for r in ended.values())
        finished = dict(query(db, "select idempotency_key, finished_at from runs where workflow = 'prio-nap' "
                                  "and idempotency_key like %s", f"{tmp_path.name}-%"))
        lows = sorted(finished[h.idempotency_key] for h in low)
        last_high = max(finished[h.idempotency_key] for h in high)
        # The step running and the ones the executor had prefetched go first; every high one
        # then goes before the rest of the backlog.
        assert last_high < lows[LOW - 8], (last_high, lows)
    finally:
        pool.stop()
