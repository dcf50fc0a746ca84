"""One snapshot of everything `miniflow monitor` shows (workers, queues, runs in flight, recent outcomes,
the slowest steps, dead letters arriving), and the gauges a coordinator or API process serves to
Prometheus from the same reads. One implementation, three faces: the CLI, the HTTP API, the web UI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from miniflow.actors.heartbeat import STATES
from miniflow.coordinator import Catalog
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import activity
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import BrokerUnavailable
from miniflow.protocol.names import QueueNames

from .queues import QueueReport, queue_report
from .why import waiting_by_queue
from .workers import WorkerView, count_by_state, list_workers

RECENT = timedelta(minutes=15)  # what "recent" means for outcomes, slow steps and dead letters


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    namespace: str
    workers: list[WorkerView]
    queues: QueueReport | None
    queues_error: str | None  # why there are no queue figures (the broker did not answer)
    active_runs: int
    oldest_active_run_s: float | None
    running: list[dict[str, Any]]
    waiting: dict[str, int]  # waiting steps per step queue
    recent_runs: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    outbox_backlog: int

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "namespace": self.namespace,
                "workers": [w.to_dict() for w in self.workers], "workers_by_state": count_by_state(self.workers),
                "queues": self.queues.to_dict() if self.queues else None, "queues_error": self.queues_error,
                "active_runs": self.active_runs, "oldest_active_run_s": self.oldest_active_run_s,
                "running": [_plain(r) for r in self.running], "waiting": self.waiting,
                "recent_runs": [_plain(r) for r in self.recent_runs], "slowest": [_plain(r) for r in self.slowest],
                "dead_letters": [_plain(r) for r in self.dead_letters], "outbox_backlog": self.outbox_backlog}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def pools_in_use(database: Database, catalog: Catalog, workers: list[WorkerView], names: QueueNames) -> set[str]:
    """Step pools worth watching: those deployed definitions route steps to, and those workers consume."""
    pools: set[str] = set()
    prefix = names.steps + "."
    for view in workers:
        pools |= {q[len(prefix):] for q in view.queues if q.startswith(prefix)}
    with database.connect() as conn:
        latest: dict[str, int] = {}
        for row in repo.list_definitions(conn):
            latest[row.name] = max(latest.get(row.name, 0), row.version)
        for name, version in latest.items():
            workflow = catalog.workflow(conn, name, version)
            if workflow is not None:
                pools |= {s.queue for s in workflow.steps.values() if s.queue}
    return pools


def oldest_waiting(grouped: dict[str, list[dict[str, Any]]], now: datetime) -> dict[str, float]:
    """Seconds the oldest waiting step of each step queue has waited (from the database)."""
    out: dict[str, float] = {}
    for queue, rows in grouped.items():
        times = [r["queued_at"] for r in rows if r["queued_at"] is not None]
        if times:
            out[queue] = (now - min(times)).total_seconds()
    return out


def queue_view(database: Database, catalog: Catalog, names: QueueNames, broker_url: str, *,
               management: str | None = None, workers: list[WorkerView] | None = None,
               now: datetime | None = None) -> QueueReport:
    """The queue monitor's report with the pools in use and the oldest waiting step of each step queue
    (BrokerUnavailable when the broker does not answer)."""
    now = now or utcnow()
    workers = workers if workers is not None else list_workers(database, names.namespace, now=now)
    with database.connect() as conn:
        grouped = waiting_by_queue(catalog, conn, names)
    return queue_report(broker_url, names, pools_in_use(database, catalog, workers, names), management=management,
                        oldest_steps=oldest_waiting(grouped, now))


def take(database: Database, catalog: Catalog, names: QueueNames, broker_url: str | None, *,
         management: str | None = None, now: datetime | None = None) -> Snapshot:
    now = now or utcnow()
    workers = list_workers(database, names.namespace, now=now)
    with database.connect() as conn:
        count, oldest = activity.active_runs(conn)
        running = activity.running_steps(conn)
        grouped = waiting_by_queue(catalog, conn, names)
        recent = [{"id": r.id, "workflow": r.workflow, "status": str(r.status), "created_at": r.created_at,
                   "finished_at": r.finished_at, "duration_ms": r.duration_ms, "error": (r.error or "")[:200] or None}
                  for r in repo.list_runs(conn, limit=15)]
        slowest = activity.slowest_attempts(conn, now - RECENT)
        letters = activity.recent_dead_letters(conn, now - RECENT)
        backlog = repo.count_outbox(conn)
    queues, error = None, None
    if broker_url:
        try:
            queues = queue_report(broker_url, names, pools_in_use(database, catalog, workers, names),
                                  management=management, oldest_steps=oldest_waiting(grouped, now))
        except BrokerUnavailable as exc:
            error = str(exc)
    else:
        error = "no broker URL (MINIFLOW_BROKER_URL): queue figures need the broker"
    return Snapshot(at=now, namespace=names.namespace, workers=workers, queues=queues, queues_error=error,
                    active_runs=count, oldest_active_run_s=round((now - oldest).total_seconds(), 3) if oldest else None,
                    running=running, waiting={q: len(rows) for q, rows in grouped.items()}, recent_runs=recent,
                    slowest=slowest, dead_letters=letters, outbox_backlog=backlog)


def gauges(database: Database, catalog: Catalog, names: QueueNames, broker_url: str | None,
           management: str | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The scrape-time gauges of actors.metrics.ScrapeGauges, from the same reads as the monitor."""
    now = utcnow()
    workers = list_workers(database, names.namespace, now=now)
    with database.connect() as conn:
        count, oldest = activity.active_runs(conn)
        queued = activity.queued_run_count(conn)
        backlog = repo.count_outbox(conn)
    out: dict[str, list[tuple[dict[str, str], float]]] = {
        "miniflow_workers": [({"state": s}, float(n)) for s, n in count_by_state(workers).items() if s in STATES],
        "miniflow_runs_active": [({"status": "running"}, float(count)), ({"status": "queued"}, float(queued))],
        "miniflow_oldest_active_run_seconds": [({}, (now - oldest).total_seconds() if oldest else 0.0)],
        "miniflow_outbox_backlog": [({}, float(backlog))],
    }
    if broker_url:
        try:
            report = queue_report(broker_url, names, pools_in_use(database, catalog, workers, names),
                                  management=management)
        except BrokerUnavailable:
            return out
        messages: list[tuple[dict[str, str], float]] = []
        consumers: list[tuple[dict[str, str], float]] = []
        for q in report.queues:
            if not q.exists:
                continue
            if q.ready is not None:
                messages.append(({"queue": q.name, "state": "ready"}, float(q.ready)))
            if q.unacked is not None:
                messages.append(({"queue": q.name, "state": "unacked"}, float(q.unacked)))
            if q.consumers is not None:
                consumers.append(({"queue": q.name}, float(q.consumers)))
        out["miniflow_queue_messages"] = messages
        out["miniflow_queue_consumers"] = consumers
    return out
