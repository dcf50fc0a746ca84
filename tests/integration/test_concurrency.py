"""Concurrency limits on real RabbitMQ and Postgres with two coordinators: both take the workflow's
gate before they decide, so the limits hold across processes, and every queued run is begun."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from miniflow.ops.client import Client

from .conftest import WorkerProcess, miniflow, query

WORKFLOW = """name: per-customer
params: {customer: {required: true}}
concurrency: {max_active_runs: 2, key: params.customer, max_per_key: 1}
steps:
  - {name: nap, task: demo.sleep, config: {seconds: 0.2}}
"""


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans open at one moment (an end counts before a begin at the same instant)."""
    events = sorted([(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans])
    level = most = 0
    for _, change in events:
        level += change
        most = max(most, level)
    return most


def test_max_active_runs_and_a_per_key_limit_hold_across_two_coordinators(cluster: dict[str, str],
                                                                          tmp_path: Path) -> None:
    (tmp_path / "limits.yaml").write_text(WORKFLOW)
    assert miniflow(cluster, "deploy", str(tmp_path / "limits.yaml")).returncode == 0
    second = WorkerProcess(cluster, ["--role", "coordinator", "--role", "results", "--threads", "4"],
                           tmp_path / "coordinator2.log")
    try:
        second.wait_ready()
        customers = ["acme", "globex", "initech"]
        with Client.from_env(cluster) as client:
            handles = [client.start("per-customer", {"customer": customers[i % 3]}, key=f"{tmp_path.name}-{i}")
                       for i in range(12)]
            ended = [h.wait(timeout=120) for h in handles]
        assert [r.status for r in ended] == ["succeeded"] * 12
    finally:
        second.stop()
    db = cluster["MINIFLOW_DATABASE_URL"]
    rows = query(db, "select concurrency_key, started_at, finished_at from runs where idempotency_key like %s",
                 f"{tmp_path.name}-%")
    assert len(rows) == 12
    assert most_at_once([(began, ended) for _, began, ended in rows]) == 2
    for customer in customers:
        assert most_at_once([(began, ended) for key, began, ended in rows if key == customer]) == 1
    assert query(db, "select count(*) from runs where workflow = 'per-customer' and status = 'queued'") == [(0,)]
