"""The pages of the web UI. Each reads through the HTTP API's own route functions (ops/api), so what a
page shows and what a button does are what the API shows and does for the same key."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError

from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError, BrokerUnavailable
from miniflow.protocol.masking import mask_fields, mask_urls
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL, RunStatus

from ..api import admin, monitor, runs, schedules, workflows
from ..api.common import _client
from ..api.models import CancelRequest, KeyRequest, StartRequest
from ..api.security import Perm, Principal
from ..views import step_status
from .app import PRE_COOKIE, Ui, _local, cookie_secure, new_pre_token, page, redirect, refuse
from .sessions import ABSOLUTE_S, COOKIE

PAGE = 50
STATUSES = [s.value for s in RunStatus]
TIMELINE_W = 900.0
SECRETISH = ("password", "secret", "token", "passwd", "api_key", "apikey", "credential", "private")


def _model(cls: Any, **values: Any) -> Any:
    """A request model from a form's values; a 422 ApiError naming each field that is not valid."""
    try:
        return cls(**values)
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()[:5])
        raise refuse(422, f"not valid: {said}") from None


def _me(request: Request) -> Principal:
    principal: Principal = request.state.ui_session.principal
    return principal


def _sync(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


# -- signing in and out ------------------------------------------------------------------------------


@page("/login", "ui_login_form", Perm.PUBLIC)
async def login_form(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    token = new_pre_token()
    response: Response = ui.render(request, "login.html", pre=token,
                                   next=_local(request.query_params.get("next", "")), error="")
    response.set_cookie(PRE_COOKIE, token, max_age=600, httponly=True, samesite="strict", path="/ui/",
                        secure=cookie_secure(request))
    return response


@page("/login", "ui_login", Perm.PUBLIC, ("POST",))
async def login(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    pre = request.cookies.get(PRE_COOKIE, "")
    target = _local(form.get("next", ""))
    if not pre or not secrets_equal(pre, form.get("pre", "")):
        raise refuse(403, "the sign-in form was not sent by this browser's sign-in page (CSRF): open it again")
    key = form.get("key", "").strip()
    try:
        cookie, session = await _sync(ui.sessions.open, key, _client(request),
                                      request.headers.get("user-agent", ""))
    except ApiError as exc:
        token = new_pre_token()
        failed: Response = ui.render(request, "login.html", exc.status, pre=token, next=target, error=exc.message)
        failed.set_cookie(PRE_COOKIE, token, max_age=600, httponly=True, samesite="strict", path="/ui/",
                          secure=cookie_secure(request))
        return failed
    request.state.principal = session.principal
    request.state.audit_detail = f"session {session.id}"
    response = RedirectResponse(target, 303)
    response.set_cookie(COOKIE, cookie, max_age=int(ABSOLUTE_S), httponly=True, samesite="strict", path="/ui/",
                        secure=cookie_secure(request))
    response.delete_cookie(PRE_COOKIE, path="/ui/")
    return response


def secrets_equal(a: str, b: str) -> bool:
    import hmac
    return hmac.compare_digest(a.encode(), b.encode())


@page("/logout", "ui_logout", Perm.READ, ("POST",))
async def logout(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    await _sync(ui.sessions.end, request.state.ui_session.id)
    request.state.audit_detail = f"session {request.state.ui_session.id}"
    response = redirect("/ui/login", "signed out")
    response.delete_cookie(COOKIE, path="/ui/")
    return response


@page("/", "ui_home", Perm.READ)
async def home(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    return RedirectResponse("/ui/runs", 303)


# -- runs ------------------------------------------------------------------------------------------


def _run_filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    out: dict[str, Any] = {"workflow": q.get("workflow", "")[:128], "status": q.get("status", ""),
                           "since": q.get("since", "")[:32], "until": q.get("until", "")[:32],
                           "text": q.get("text", "")[:100], "cursor": q.get("cursor", "")[:200]}
    if out["status"] and out["status"] not in STATUSES:
        raise refuse(422, f"status must be one of {', '.join(STATUSES)}")
    return out


def _time(value: str, what: str) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise refuse(422, f"{what} is not a time (YYYY-MM-DDTHH:MM, UTC)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _runs_page(ui: Ui, caller: Principal, f: dict[str, Any]) -> Any:
    return runs.list_runs(ui.api, caller, workflow=f["workflow"] or None, status=RunStatus(f["status"])
                          if f["status"] else None, since=_time(f["since"], "since"), until=_time(f["until"], "until"),
                          limit=PAGE, cursor=f["cursor"] or None, text=f["text"] or None)


@page("/runs", "ui_runs", Perm.READ)
async def runs_list(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    f = _run_filters(request)
    found = await _sync(_runs_page, ui, _me(request), f)
    query = {k: v for k, v in f.items() if v and k != "cursor"}
    return ui.render(request, "runs.html", runs=found.items, next_cursor=found.next_cursor, f=f,
                     statuses=STATUSES, query=query, live=not f["cursor"])


@page("/runs/rows", "ui_run_rows", Perm.READ)
async def runs_rows(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    f = _run_filters(request)
    found = await _sync(_runs_page, ui, _me(request), f)
    return ui.render(request, "_run_rows.html", runs=found.items)


def _run_view(ui: Ui, caller: Principal, run_id: str) -> dict[str, Any]:
    api = ui.api
    with api.database.connect() as conn:
        run = runs._run(api, conn, caller, run_id)
        steps = repo.get_steps(conn, run.id)
        attempts = repo.get_attempts(conn, run.id)
        detail = runs._detail(api, conn, run, steps, attempts)
        workflow = api.catalog.workflow(conn, run.workflow, run.version)
    names = [s["step"] for s in detail["steps"]]
    edges = [(n, s.name) for s in workflow.steps.values() for n in s.needs] if workflow else []
    return {"run": detail, "layout": ui.layouts.of(run.workflow, run.version, names, edges),
            "statuses": {s["step"]: s["status"] for s in detail["steps"]},
            "timeline": timeline(run, steps, attempts, workflow, utcnow()),
            "can_cancel": detail["status"] not in RUN_TERMINAL, "can_retry": detail["status"] in RETRYABLE}


def timeline(run: Any, steps: dict[str, Any], attempts: list[Any], workflow: Any, now: datetime) -> dict[str, Any]:
    """The Gantt chart of a run: per step, per attempt, its wait (from when it was ready: its needs done,
    or the previous attempt's end, to its start; queue time and any backoff) and its execution."""
    start = run.created_at
    end = run.finished_at or now
    span = max((end - start).total_seconds(), 0.001)
    scale = TIMELINE_W / span

    def x(at: datetime) -> float:
        return float(round(max(0.0, min(TIMELINE_W, (at - start).total_seconds() * scale)), 1))

    by_step: dict[str, list[Any]] = {}
    for a in attempts:
        by_step.setdefault(a.step, []).append(a)
    done_at = {name: max(a.recorded_at for a in rows) for name, rows in by_step.items()}
    order = list(workflow.steps) if workflow else sorted(steps)
    rows = []
    for name in order:
        row = steps.get(name)
        if row is None:
            continue
        spec = workflow.steps.get(name) if workflow else None
        needs = [done_at[n] for n in (spec.needs if spec else ()) if n in done_at]
        ready = max(needs) if needs else start
        bars = []
        for a in sorted(by_step.get(name, []), key=lambda a: a.attempt):
            if a.started_at > ready:
                bars.append({"kind": "wait", "x": x(ready), "w": max(1.0, x(a.started_at) - x(ready)),
                             "title": f"attempt {a.attempt} waited {(a.started_at - ready).total_seconds():.3f} s"})
            bars.append({"kind": "ok" if a.ok else "fail", "x": x(a.started_at),
                         "w": max(1.0, x(a.finished_at) - x(a.started_at)),
                         "title": f"attempt {a.attempt} {'succeeded' if a.ok else 'failed'} in "
                                  f"{a.duration_ms:.0f} ms on {a.node or '?'}"})
            ready = a.recorded_at
        if step_status(row) == "running" and row.started_at is not None and row.attempt not in {
                a.attempt for a in by_step.get(name, [])}:
            if row.started_at > ready:
                bars.append({"kind": "wait", "x": x(ready), "w": max(1.0, x(row.started_at) - x(ready)),
                             "title": f"attempt {row.attempt} waited"})
            bars.append({"kind": "run", "x": x(row.started_at), "w": max(1.0, x(now) - x(row.started_at)),
                         "title": f"attempt {row.attempt} running on {row.node or '?'}"})
        elif row.status == "queued" and not bars:
            bars.append({"kind": "wait", "x": x(ready), "w": max(1.0, x(now) - x(ready)), "title": "waiting"})
        rows.append({"step": name, "bars": bars})
    return {"rows": rows, "width": TIMELINE_W, "span_s": span, "height": 22 * len(rows) + 24}


@page("/runs/{run_id}", "ui_run", Perm.READ)
async def run_page(request: Request, ui: Ui, form: dict[str, str], run_id: str) -> Response:
    view = await _sync(_run_view, ui, _me(request), run_id)
    return ui.render(request, "run.html", **view)


@page("/runs/{run_id}/live", "ui_run_live", Perm.READ)
async def run_live(request: Request, ui: Ui, form: dict[str, str], run_id: str) -> Response:
    view = await _sync(_run_view, ui, _me(request), run_id)
    return ui.render(request, "_run_live.html", **view)


@page("/runs/{run_id}/events", "ui_run_events", Perm.READ)
async def run_events(request: Request, ui: Ui, form: dict[str, str], run_id: str) -> Response:
    response: StreamingResponse = await runs.run_events(ui.api, run_id, _me(request), request)
    return response


def _step_view(ui: Ui, caller: Principal, run_id: str, step: str) -> dict[str, Any]:
    api = ui.api
    with api.database.connect() as conn:
        run = runs._run(api, conn, caller, run_id)
        steps = repo.get_steps(conn, run.id)
        attempts = repo.get_attempts(conn, run.id)
        detail = runs._detail(api, conn, run, steps, attempts)
        workflow = api.catalog.workflow(conn, run.workflow, run.version)
    shown = next((s for s in detail["steps"] if s["step"] == step), None)
    if shown is None:
        raise refuse(404, f"run {run.id} has no step {step[:100]!r}")
    spec = workflow.steps.get(step) if workflow else None
    secrets = workflow.secret_params() if workflow else frozenset()
    inputs = {n: mask_fields(steps[n].output, secrets) for n in (spec.needs if spec else ()) if n in steps}
    why = None
    if shown["status"] in ("queued", "pending") and detail["status"] == RunStatus.RUNNING:
        why = monitor.why(api, caller, run.id, step)
    return {"run": detail, "step": shown, "spec": spec, "inputs": inputs,
            "config": mask_fields(spec.config, secrets) if spec else None,
            "attempts": [a for a in detail["attempts"] if a["step"] == step], "why": why}


@page("/runs/{run_id}/steps/{step}", "ui_step", Perm.READ)
async def step_page(request: Request, ui: Ui, form: dict[str, str], run_id: str, step: str) -> Response:
    view = await _sync(_step_view, ui, _me(request), run_id, step)
    return ui.render(request, "step.html", **view)


@page("/runs/{run_id}/cancel", "ui_cancel_run", Perm.OPERATE, ("POST",))
async def cancel(request: Request, ui: Ui, form: dict[str, str], run_id: str) -> Response:
    reason = form.get("reason", "")[:200] or "cancelled in the web UI"
    done = await _sync(runs.cancel_run, ui.api, run_id, _me(request), request, Response(), CancelRequest(reason=reason))
    return redirect(f"/ui/runs/{done.run_id}", "cancel requested" if done.published else f"the run is {done.status}")


@page("/runs/{run_id}/retry", "ui_retry_run", Perm.OPERATE, ("POST",))
async def retry(request: Request, ui: Ui, form: dict[str, str], run_id: str) -> Response:
    done = await _sync(runs.retry_run, ui.api, run_id, _me(request), request, 5.0)
    return redirect(f"/ui/runs/{done.run_id}", "retried" if done.handled else "retry requested")


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
        except ValueError:
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
        return redirect(f"/ui/workflows/{name}", f"start published (message {started.message_id}); no run yet: "
                                                  "is a coordinator running?")
    return redirect(f"/ui/runs/{started.run_id}", "started" if not started.existing else "this key's run")


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


@page("/monitor", "ui_monitor", Perm.READ)
async def monitor_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    view = await _sync(_monitor_view, ui, _me(request))
    return ui.render(request, "monitor.html", **view)


@page("/dead-letters", "ui_dead_letters", Perm.READ)
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


@page("/dead-letters/{letter_id}", "ui_dead_letter", Perm.READ)
async def dead_letter(request: Request, ui: Ui, form: dict[str, str], letter_id: str) -> Response:
    if not letter_id.isdigit() or not 0 < int(letter_id) < 2**62:
        raise refuse(404, "a dead letter's id is a number")
    found = await _sync(admin.show_dead_letter, ui.api, int(letter_id), _me(request))
    return ui.render(request, "dead_letter.html", letter=found, decoded=decode_raw(found.raw_hex))


# -- keys, audit, sessions (admin) ----------------------------------------------------------------


@page("/keys", "ui_keys", Perm.ADMIN)
async def keys_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    found = await _sync(admin.list_keys, ui.api, _me(request))
    return ui.render(request, "keys.html", keys=found, made=None)


@page("/keys", "ui_create_key", Perm.ADMIN, ("POST",))
async def create_key(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    body = _model(KeyRequest, name=form.get("name", "").strip(), role=form.get("role", "viewer"),
                  expires=form.get("expires", "").strip() or None, scope=form.get("scope", "").strip() or None)
    made = await _sync(admin.create_key, ui.api, body, _me(request), request)
    found = await _sync(admin.list_keys, ui.api, _me(request))
    return ui.render(request, "keys.html", 201, keys=found, made=made)


@page("/keys/{kid}/revoke", "ui_revoke_key", Perm.ADMIN, ("POST",))
async def revoke_key(request: Request, ui: Ui, form: dict[str, str], kid: str) -> Response:
    await _sync(admin.revoke_key, ui.api, kid[:12], _me(request), request)
    return redirect("/ui/keys", f"key {kid[:12]} revoked")


@page("/audit", "ui_audit", Perm.ADMIN)
async def audit_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    q = request.query_params
    outcome = q.get("outcome", "")
    if outcome and outcome not in ("ok", "denied", "failed"):
        raise refuse(422, "outcome is ok, denied or failed")
    found = await _sync(admin.list_audit, ui.api, _me(request), PAGE, q.get("key", "")[:12] or None, outcome or None,
                        q.get("cursor", "")[:200] or None)
    return ui.render(request, "audit.html", entries=found.items, next_cursor=found.next_cursor, outcome=outcome,
                     key=q.get("key", "")[:12])


@page("/sessions", "ui_sessions", Perm.ADMIN)
async def sessions_page(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    found = await _sync(ui.sessions.list_open)
    return ui.render(request, "sessions.html", sessions=found, idle_s=ui.sessions.idle_s)


@page("/sessions/{session_id}/revoke", "ui_revoke_session", Perm.ADMIN, ("POST",))
async def revoke_session(request: Request, ui: Ui, form: dict[str, str], session_id: str) -> Response:
    ended = await _sync(ui.sessions.end, session_id[:32])
    request.state.audit_detail = f"session {session_id[:32]}"
    if not ended:
        raise refuse(404, f"no open session {session_id[:32]!r}")
    return redirect("/ui/sessions", "session ended")

