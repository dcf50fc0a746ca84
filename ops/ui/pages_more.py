"""The pages of the web UI beside the runs: workflows (and the Start form), schedules, queues and
workers, dead letters, and the admin pages (keys, audit, sessions)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import Request, Response

from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError, BrokerUnavailable
from miniflow.protocol.masking import mask_urls
from miniflow.protocol.states import RUN_TERMINAL, RunStatus

from ..api import admin, monitor, runs, schedules, workflows
from ..api.models import KeyRequest, StartRequest
from ..api.security import GLOBAL, Perm, Principal
from .app import Ui, page, redirect, refuse
from .pages import PAGE, SECRETISH, _me, _model, _sync

# -- workflows -------------------------------------------------------------------------------------


@page("/workflows", "ui_workflows", Perm.READ)
async def workflows_list(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    found = await _sync(workflows.list_workflows, ui.api, _me(request))
    return ui.render(request, "workflows.html", workflows=found)


def _workflow_view(ui: Ui, caller: Principal, name: str, version: int | None) -> dict[str, Any]:
    shown = workflows._workflow(ui.api, caller, name, version)
    recent = runs.list_runs(ui.api, caller, workflow=name.replace("*", ""), limit=100).items
    ended = [r for r in recent if r.status in RUN_TERMINAL]
    rate = (sum(r.status == RunStatus.SUCCEEDED for r in ended) / len(ended)) if ended else None
    names = [n.id for n in shown.graph.nodes]
    layout = ui.layouts.of(shown.name, shown.version, names, [(e.source, e.target) for e in shown.graph.edges])
    return {"wf": shown, "recent": recent[:20], "rate": rate, "ended": len(ended), "layout": layout}


@page("/workflows/{name}", "ui_workflow", Perm.READ)
async def workflow_page(request: Request, ui: Ui, form: dict[str, str], name: str) -> Response:
    raw = request.query_params.get("version", "")
    version = int(raw) if raw.isdigit() and 0 < int(raw) < 2**31 else None
    view = await _sync(_workflow_view, ui, _me(request), name, version)
    return ui.render(request, "workflow.html", **view)


def parse_value(text: str) -> Any:
    """A form field's value: JSON when it reads as JSON (numbers, true/false, lists, objects), else text."""
    stripped = text.strip()
    if stripped and (stripped[0] in '[{"-' or stripped[0].isdigit() or stripped in ("true", "false", "null")):
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError):
            return text
    return text


@page("/workflows/{name}/start", "ui_start_run", Perm.START, ("POST",))
async def start(request: Request, ui: Ui, form: dict[str, str], name: str) -> Response:
    params = {k[6:]: parse_value(v) for k, v in form.items() if k.startswith("param.") and v != ""}
    raw_version, raw_priority = form.get("version", ""), form.get("priority", "0") or "0"
    if not raw_priority.isdigit() or not 0 <= int(raw_priority) <= 9:
        raise refuse(422, "priority must be a whole number from 0 to 9")
    body = _model(StartRequest, workflow=name, params=params,
                  version=int(raw_version) if raw_version.isdigit() else None, priority=int(raw_priority))
    key = form.get("idempotency_key", "").strip()[:200] or str(uuid.uuid4())
    started = await _sync(runs.start_run, ui.api, body, _me(request), request, Response(), key, 10.0)
    if started.run_id is None:
        return redirect(f"/ui/workflows/{name}", "published")
    return redirect(f"/ui/runs/{started.run_id}", "started" if not started.existing else "existing")


# -- schedules -------------------------------------------------------------------------------------


@page("/schedules", "ui_schedules", Perm.READ)
async def schedules_list(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    found = await _sync(schedules.list_schedules, ui.api, _me(request))
    return ui.render(request, "schedules.html", schedules=found)


@page("/schedules/{name}", "ui_schedule", Perm.READ)
async def schedule_page(request: Request, ui: Ui, form: dict[str, str], name: str) -> Response:
    found = await _sync(schedules.show_schedule, ui.api, name, _me(request), 10, 100)
    return ui.render(request, "schedule.html", s=found)


@page("/schedules/{name}/{action}", "ui_schedule_action", Perm.OPERATE, ("POST",))
async def schedule_action(request: Request, ui: Ui, form: dict[str, str], name: str, action: str) -> Response:
    if action == "pause":
        await _sync(schedules.pause_schedule, ui.api, name, _me(request))
    elif action == "resume":
        await _sync(schedules.resume_schedule, ui.api, name, _me(request))
    elif action == "trigger":
        await _sync(schedules.trigger_schedule, ui.api, name, _me(request), request)
    else:
        raise refuse(404, "a schedule is paused, resumed or triggered here")
    return redirect(f"/ui/schedules/{name}", {"pause": "paused", "resume": "resumed",
                                              "trigger": "triggered"}[action])


# -- queues, workers, dead letters ----------------------------------------------------------------


def _monitor_view(ui: Ui, caller: Principal) -> dict[str, Any]:
    workers = monitor.workers(ui.api, caller, everything=False)
    try:
        queues: dict[str, Any] | None = monitor.queues(ui.api, caller)
        problem = ""
    except (ApiError, BrokerUnavailable) as exc:
        queues, problem = None, getattr(exc, "message", str(exc))
    from ..monitor.why import waiting_by_queue
    with ui.api.database.connect() as conn:
        grouped = waiting_by_queue(ui.api.catalog, conn, ui.api.names, limit=2000)
    now = utcnow()
    oldest = {q: {**rows[0], "waiting_s": (now - rows[0]["queued_at"]).total_seconds()
                  if rows[0]["queued_at"] else None, "count": len(rows)} for q, rows in grouped.items() if rows}
    return {"workers": workers, "queues": queues, "queue_problem": problem, "oldest": oldest}


@page("/monitor", "ui_monitor", Perm.READ, kind=GLOBAL)
async def monitor_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    view = await _sync(_monitor_view, ui, _me(request))
    return ui.render(request, "monitor.html", **view)


@page("/dead-letters", "ui_dead_letters", Perm.READ, kind=GLOBAL)
async def dead_letters(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    cursor = request.query_params.get("cursor", "")[:200] or None
    found = await _sync(admin.list_dead_letters, ui.api, _me(request), PAGE, cursor)
    return ui.render(request, "dead_letters.html", letters=found.items, next_cursor=found.next_cursor)


def decode_raw(raw_hex: str | None) -> Any:
    """The rejected bytes decoded where they can be (JSON, then msgpack), with the values of fields named
    like secrets and the passwords of URLs masked; None when they are neither."""
    if not raw_hex:
        return None
    raw = bytes.fromhex(raw_hex)
    value: Any = None
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        return None
    except (UnicodeDecodeError, ValueError):
        try:
            import msgpack
            value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001  (any bytes at all may be here: not decodable is an answer)
            return None
    return _mask(value)


def _mask(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return "…"
    if isinstance(value, dict):
        return {str(k): ("***" if any(s in str(k).lower() for s in SECRETISH) else _mask(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, depth + 1) for v in value]
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


@page("/dead-letters/{letter_id}", "ui_dead_letter", Perm.READ, kind=GLOBAL)
async def dead_letter(request: Request, ui: Ui, form: dict[str, str], letter_id: str) -> Response:
    if not letter_id.isdigit() or not 0 < int(letter_id) < 2**62:
        raise refuse(404, "a dead letter's id is a number")
    found = await _sync(admin.show_dead_letter, ui.api, int(letter_id), _me(request))
    return ui.render(request, "dead_letter.html", letter=found, decoded=decode_raw(found.raw_hex))


# -- keys, audit, sessions (admin) ----------------------------------------------------------------


@page("/keys", "ui_keys", Perm.ADMIN, kind=GLOBAL)
async def keys_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    found = await _sync(admin.list_keys, ui.api, _me(request))
    return ui.render(request, "keys.html", keys=found, made=None)


@page("/keys", "ui_create_key", Perm.ADMIN, ("POST",), kind=GLOBAL)
async def create_key(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    body = _model(KeyRequest, name=form.get("name", "").strip(), role=form.get("role", "viewer"),
                  expires=form.get("expires", "").strip() or None, scope=form.get("scope", "").strip() or None)
    made = await _sync(admin.create_key, ui.api, body, _me(request), request)
    found = await _sync(admin.list_keys, ui.api, _me(request))
    return ui.render(request, "keys.html", 201, keys=found, made=made)


@page("/keys/{kid}/revoke", "ui_revoke_key", Perm.ADMIN, ("POST",), kind=GLOBAL)
async def revoke_key(request: Request, ui: Ui, form: dict[str, str], kid: str) -> Response:
    await _sync(admin.revoke_key, ui.api, kid[:12], _me(request), request)
    return redirect("/ui/keys", "revoked")


@page("/audit", "ui_audit", Perm.ADMIN, kind=GLOBAL)
async def audit_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    q = request.query_params
    outcome = q.get("outcome", "")
    if outcome and outcome not in ("ok", "denied", "failed"):
        raise refuse(422, "outcome is ok, denied or failed")
    found = await _sync(admin.list_audit, ui.api, _me(request), PAGE, q.get("key", "")[:12] or None, outcome or None,
                        q.get("cursor", "")[:200] or None)
    return ui.render(request, "audit.html", entries=found.items, next_cursor=found.next_cursor, outcome=outcome,
                     key=q.get("key", "")[:12])


@page("/sessions", "ui_sessions", Perm.ADMIN, kind=GLOBAL)
async def sessions_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    found = await _sync(ui.sessions.list_open)
    return ui.render(request, "sessions.html", sessions=found, idle_s=ui.sessions.idle_s)


@page("/sessions/{session_id}/revoke", "ui_revoke_session", Perm.ADMIN, ("POST",), kind=GLOBAL)
async def revoke_session(request: Request, ui: Ui, form: dict[str, str], session_id: str) -> Response:
    ended = await _sync(ui.sessions.end, session_id[:32])
    request.state.audit_detail = f"session {session_id[:32]}"
    if not ended:
        raise refuse(404, f"no open session {session_id[:32]!r}")
    return redirect("/ui/sessions", "session_ended")

