"""How runs, steps, attempts, schedules and dead letters are shown: plain data for JSON, rich tables
for people. The values of secret params are masked in both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Connection

from miniflow.coordinator import Catalog, next_fires, parse_cron
from miniflow.coordinator.workflow import instance_of
from miniflow.persistence import AttemptRow, DeadLetterRow, RunRow, ScheduleRow, StepRow
from miniflow.protocol.masking import mask_fields, mask_params
from miniflow.protocol.states import RunStatus, StepStatus

from .terminal import safe_text

STATUS_STYLE = {RunStatus.SUCCEEDED: "green", RunStatus.FAILED: "red", RunStatus.CANCELLED: "yellow",
                RunStatus.RUNNING: "cyan", StepStatus.QUEUED: "cyan", StepStatus.PENDING: "dim",
                StepStatus.SKIPPED: "dim", StepStatus.UPSTREAM_FAILED: "magenta"}
_catalog = Catalog()  # a cache of immutable definitions, for the names of secret params


def secret_params(conn: Connection, workflow: str, version: int | None) -> frozenset[str]:
    """Names of the secret params of a workflow version (the latest when None): masked when shown."""
    return _catalog.secret_params(conn, workflow, version)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


RUNNING = "running"  # shown for a queued step whose executor reported it running (not a stored state)


def step_status(step: StepRow) -> str:
    return RUNNING if step.running else str(step.status)


def run_to_dict(run: RunRow, steps: Sequence[StepRow] | None = None, attempts: Sequence[AttemptRow] | None = None,
                secrets: frozenset[str] = frozenset(), order: Sequence[str] = ()) -> dict[str, Any]:
    """A run as plain data, its steps in ``order`` (the workflow's, when given); the values of secret
    params are masked, in params and in the fields of outputs named like them."""
    out: dict[str, Any] = {
        "id": run.id, "workflow": run.workflow, "version": run.version, "status": run.status,
        "idempotency_key": run.idempotency_key, "params": mask_params(run.params or {}, secrets),
        "priority": run.priority, "error": run.error, "trace_id": run.trace_id, "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at), "duration_ms": run.duration_ms,
    }
    if steps is not None:
        counts: dict[str, int] = {}
        for a in attempts or []:
            counts[a.step] = counts.get(a.step, 0) + 1
        rank = {name: i for i, name in enumerate(order)}
        out["steps"] = [{
            "step": s.step, "status": step_status(s), "attempts": counts.get(s.step, 0),
            "current_attempt": s.attempt, "duration_ms": s.duration_ms, "node": s.node, "error": s.error,
            "note": s.note if s.status == StepStatus.QUEUED or (s.status == StepStatus.PENDING and s.slot_wait_since)
            else None, "output": mask_fields(s.output, secrets),
        } for s in sorted(steps, key=lambda s: _place(rank, s.step))]
    if attempts is not None:
        out["attempts"] = [{
            "step": a.step, "attempt": a.attempt, "ok": a.ok, "node": a.node, "duration_ms": round(a.duration_ms, 1),
            "error_type": a.error_type, "error": a.error, "traceback": a.traceback,
            "output": mask_fields(a.output, secrets), "started_at": iso(a.started_at),
            "finished_at": iso(a.finished_at),
        } for a in attempts]
    return out


def _place(rank: dict[str, int], step: str) -> tuple[int, int]:
    """Where a step goes in a run's list: by the workflow's order, an instance of a map step (fan[3])
    after its map step, by index."""
    mapped = instance_of(step)
    if mapped is None:
        return rank.get(step, len(rank)), 0
    return rank.get(mapped[0], len(rank)), mapped[1] + 1


MAX_INSTANCES_SHOWN = 50  # instances of map steps listed on a run's page (the rest are counted)


def collapse_instances(steps: list[dict[str, Any]], limit: int = MAX_INSTANCES_SHOWN
                       ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """A run's steps (of ``run_to_dict``, in its order) with at most ``limit`` instances of map steps
    among them (those that failed, then those running or queued, then the first of the rest), and
    per map step its
    number of ``elements``, how many of them are ``listed``, and how many are in each status
    (``by_status``)."""
    tallies: dict[str, dict[str, Any]] = {}
    instances: list[dict[str, Any]] = []
    for s in steps:
        mapped = instance_of(s["step"])
        if mapped is not None:
            tally = tallies.setdefault(mapped[0], {"elements": 0, "listed": 0, "by_status": {}})
            tally["elements"] += 1
            tally["by_status"][s["status"]] = tally["by_status"].get(s["status"], 0) + 1
            instances.append(s)
    urgency = {"failed": 0, "running": 1, "queued": 2}
    kept = {id(s) for s in sorted(instances, key=lambda s: urgency.get(s["status"], 3))[:limit]}
    shown = [s for s in steps if instance_of(s["step"]) is None or id(s) in kept]
    for s in shown:
        mapped = instance_of(s["step"])
        if mapped is not None:
            tallies[mapped[0]]["listed"] += 1
    return shown, tallies


def short(value: Any, limit: int = 80) -> str:
    """A value as one line of at most ``limit`` characters (JSON for data)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def schedule_to_dict(row: ScheduleRow, count: int = 0, secrets: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A schedule as plain data (with its next ``count`` fire times); secret params masked."""
    out: dict[str, Any] = {
        "id": row.id, "name": row.name, "workflow": row.workflow, "version": row.version,
        "cron": row.cron, "timezone": row.timezone, "params": mask_params(row.params or {}, secrets),
        "start": iso(row.start_at), "end": iso(row.end_at), "jitter": row.jitter_s,
        "catch_up": {"policy": row.catch_up, "limit": row.catch_up_limit, "grace": row.catch_up_grace_s},
        "overlap": row.overlap, "priority": row.priority, "paused": row.paused, "next_due_at": iso(row.next_due_at),
    }
    if count:
        fires: list[datetime] = []
        if row.next_due_at is not None and not row.paused:
            fires = [row.next_due_at, *next_fires(parse_cron(row.cron, row.timezone), row.next_due_at, count - 1)]
            if row.end_at is not None:
                fires = [f for f in fires if f <= row.end_at]
        out["next_fires"] = [iso(f) for f in fires]
    return out


def dead_letter_to_dict(row: DeadLetterRow) -> dict[str, Any]:
    return {"id": row.id, "queue": row.queue, "message_id": row.message_id, "actor": row.actor, "code": row.code,
            "detail": row.detail, "raw_bytes": len(row.raw), "node": row.node, "created_at": str(row.created_at)}


def print_json(console: Console, data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def runs_table(runs: Sequence[RunRow]) -> Table:
    table = Table(title="runs", title_justify="left")
    for col in ("id", "workflow", "version", "status", "created", "duration"):
        table.add_column(col)
    for r in runs:
        table.add_row(safe_text(r.id), safe_text(r.workflow), str(r.version),
                      safe_text(r.status, STATUS_STYLE.get(r.status, "")),
                      (iso(r.created_at) or "")[:19], fmt_ms(r.duration_ms))
    return table


def steps_table(detail: dict[str, Any], title: str = "steps") -> Table:
    """The steps of a run (in the order given): status, attempts, node, and the error, the output or
    why it waits, each cut to one short line."""
    table = Table(title=title, title_justify="left")
    for col in ("step", "status", "attempts", "duration", "node", "error / output / waiting"):
        table.add_column(col, overflow="fold")
    shown, maps = collapse_instances(detail["steps"])
    for s in shown:
        status = s["status"]
        said = s["error"] or (f"waiting: {s['note']}" if s.get("note") else short(s["output"]))
        if s["step"] in maps:
            tally = maps[s["step"]]
            said = ", ".join(f"{n} {st}" for st, n in sorted(tally["by_status"].items())) + \
                f" of {tally['elements']} elements ({tally['listed']} listed); " + said
        table.add_row(safe_text(s["step"]), safe_text(status, STATUS_STYLE.get(status, "")), str(s["attempts"]),
                      fmt_ms(s["duration_ms"]), safe_text(s["node"] or "-"), safe_text(short(said, 160)))
    return table
