"""How runs, steps and attempts are shown: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from coordinator import Coordinator, mask_params
from persistence.repository import as_utc
from protocol.names import QueueNames

STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan",
                "queued": "cyan", "pending": "dim", "skipped": "dim"}


_definitions = Coordinator(QueueNames())  # only its cache of immutable definitions is used


def secret_params(conn: Any, workflow: str, version: int | None) -> frozenset[str]:
    """Names of the secret params of a workflow version (the latest when None): masked when shown."""
    found = _definitions.workflow(conn, workflow, version)
    return found.secret_params() if found else frozenset()


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def duration_ms(start: datetime | None, end: datetime | None) -> float | None:
    start, end = as_utc(start), as_utc(end)
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def run_to_dict(run: Any, steps: list[Any] | None = None, attempts: list[Any] | None = None,
                secrets: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A run as plain data; the values of secret params are masked."""
    out: dict[str, Any] = {
        "id": run["id"], "workflow": run["workflow"], "version": run["version"], "status": run["status"],
        "params": mask_params(run["params"] or {}, secrets), "priority": run["priority"], "error": run["error"],
        "trace_id": run["trace_id"], "created_at": iso(run["created_at"]),
        "finished_at": iso(run["finished_at"]),
        "duration_ms": duration_ms(run["started_at"], run["finished_at"]),
    }
    if steps is not None:
        counts: dict[str, int] = {}
        for a in attempts or []:
            counts[a["step"]] = counts.get(a["step"], 0) + 1
        out["steps"] = [{
            "step": s["step"], "status": s["status"], "attempts": counts.get(s["step"], 0),
            "current_attempt": s["attempt"], "duration_ms": duration_ms(s["started_at"], s["finished_at"]),
            "node": s["node"], "error": s["error"], "output": s["output"],
        } for s in steps]
    if attempts is not None:
        out["attempts"] = [{
            "step": a["step"], "attempt": a["attempt"], "ok": a["ok"], "node": a["node"],
            "duration_ms": round(a["duration_ms"], 1), "error": a["error"],
            "started_at": iso(a["started_at"]),
        } for a in attempts]
    return out


def print_json(console: Console, data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def runs_table(runs: list[Any]) -> Table:
    table = Table(title="runs", title_justify="left")
    for col in ("id", "workflow", "version", "status", "created", "duration"):
        table.add_column(col)
    for r in runs:
        status = r["status"]
        table.add_row(r["id"], r["workflow"], str(r["version"]), f"[{STATUS_STYLE.get(status, '')}]{status}",
                      (iso(r["created_at"]) or "")[:19], fmt_ms(duration_ms(r["started_at"], r["finished_at"])))
    return table


def steps_table(detail: dict[str, Any], title: str = "steps") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("step", "status", "attempts", "duration", "node", "error"):
        table.add_column(col, overflow="fold")
    for s in detail["steps"]:
        status = s["status"]
        table.add_row(s["step"], f"[{STATUS_STYLE.get(status, '')}]{status}", str(s["attempts"]),
                      fmt_ms(s["duration_ms"]), s["node"] or "-", (s["error"] or "")[:200])
    return table
