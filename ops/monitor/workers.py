"""The workers registry as the CLI, the HTTP API and the web UI show it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from miniflow.actors.heartbeat import GONE, GONE_AFTER, LATE_AFTER, STATES, STOPPED, state_of
from miniflow.persistence import Database, WorkerRow
from miniflow.persistence.repository import workers as wrepo
from miniflow.protocol.clock import utcnow

SHOW_GONE_FOR = timedelta(hours=1)  # gone and stopped processes stay listed this long (--all: every row)


@dataclass(frozen=True)
class WorkerView:
    node: str
    kind: str
    state: str  # alive, late, gone, stopped
    roles: list[str]
    queues: list[str]
    threads: int
    busy: int
    running: list[dict[str, Any]]
    version: str
    pid: int
    started_at: datetime
    last_seen: datetime
    silent_s: float  # since the last heartbeat
    interval_s: float
    stopped_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "state": self.state, "roles": self.roles,
                "queues": self.queues, "threads": self.threads, "busy": self.busy, "running": self.running,
                "version": self.version, "pid": self.pid, "started_at": self.started_at.isoformat(),
                "last_seen": self.last_seen.isoformat(), "silent_s": self.silent_s, "interval_s": self.interval_s,
                "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
                "late_after_s": round(LATE_AFTER * self.interval_s, 3),
                "gone_after_s": round(GONE_AFTER * self.interval_s, 3)}


def view_of(row: WorkerRow, now: datetime) -> WorkerView:
    state = state_of(row, now)
    return WorkerView(node=row.node, kind=row.kind, state=state, roles=[r for r in row.roles.split(",") if r],
                      queues=list(row.queues or []), threads=row.threads,
                      busy=row.busy if state not in (GONE, STOPPED) else 0,
                      running=list(row.running or []) if state not in (GONE, STOPPED) else [],
                      version=row.version, pid=row.pid, started_at=row.started_at, last_seen=row.last_seen,
                      silent_s=round((now - row.last_seen).total_seconds(), 3), interval_s=row.interval_s,
                      stopped_at=row.stopped_at)


def list_workers(database: Database, namespace: str, *, everything: bool = False,
                 now: datetime | None = None) -> list[WorkerView]:
    """The processes of a namespace: live ones, and those gone or stopped within the last hour (every
    row with ``everything``). Alive first, then late, gone, stopped."""
    now = now or utcnow()
    with database.connect() as conn:
        rows = wrepo.list_workers(conn, namespace=namespace, seen_since=None if everything else now - SHOW_GONE_FOR)
    order = {s: i for i, s in enumerate(STATES)}
    views = [view_of(r, now) for r in rows]
    return sorted(views, key=lambda v: (order.get(v.state, 9), v.kind, v.node))


def count_by_state(views: list[WorkerView]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for v in views:
        counts[v.state] = counts.get(v.state, 0) + 1
    return counts


def consumers_of(views: list[WorkerView], queue: str) -> list[WorkerView]:
    """The live (alive or late) processes that say they consume ``queue``."""
    return [v for v in views if queue in v.queues and v.state in ("alive", "late")]
