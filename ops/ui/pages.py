"""The pages of the web UI. Each reads through the HTTP API's own route functions (ops/api), so what a
page shows and what a button does are what the API shows and does for the same key."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError

from miniflow.coordinator.workflow import instance_of
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError
from miniflow.protocol.masking import mask_fields
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL, RunStatus

from ..api import monitor, runs
from ..api.common import _client
from ..api.models import CancelRequest
from ..api.security import Perm, Principal
from ..views import collapse_instances, step_status
from .app import PRE_COOKIE, Ui, _local, cookie_secure, new_pre_token, page, redirect, refuse
from .sessions import ABSOLUTE_S, COOKIE

PAGE = 50
STATUSES = [s.value for s in RunStatus]
TIMELINE_W = 900.0
SESSION_RECHECK_S = 5.0  # an open events stream ends within this long of its session's end
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
    response = redirect("/ui/login", "signed_out")
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
                     statuses=STATUSES, query=query, live=not f["cursor"] and not f["text"])  # text: a scan


@page("/runs/rows", "ui_run_rows", Perm.READ)
async def runs_rows(request: Request, ui: Ui, form: dict[str, str]) -> Response:
    f = _run_filters(request)
    found = await _sync(_runs_page, ui, _me(request), f)
    return ui.render(request, "_run_rows.html", runs=found.items)


def _load(ui: Ui, caller: Principal, run_id: str) -> tuple[Any, dict[str, Any], list[Any], dict[str, Any], Any]:
    """A run the caller may see: its row, step rows, attempts, the API's detail, and its workflow."""
    api = ui.api
    with api.database.connect() as conn:
        run = runs._run(api, conn, caller, run_id)
        steps = repo.get_steps(conn, run.id)
        attempts = repo.get_attempts(conn, run.id)
        detail = runs._detail(api, conn, run, steps, attempts)
        workflow = api.catalog.workflow(conn, run.workflow, run.version)
    return run, steps, attempts, detail, workflow


def _run_view(ui: Ui, caller: Principal, run_id: str) -> dict[str, Any]:
    run, steps, attempts, detail, workflow = _load(ui, caller, run_id)
    detail["steps"], maps = collapse_instances(detail["steps"])
    names = [s["step"] for s in detail["steps"] if instance_of(s["step"]) is None]  # the DAG: the defined steps
    edges = [(n, s.name) for s in workflow.steps.values() for n in s.needs] if workflow else []
    return {"run": detail, "layout": ui.layouts.of(run.workflow, run.version, names, edges),
            "statuses": {s["step"]: s["status"] for s in detail["steps"]}, "maps": maps,
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
    """The run's events stream (the API's), ended once the session ends: it is looked at again every
    SESSION_RECHECK_S while the stream is open."""
    response: StreamingResponse = await runs.run_events(ui.api, run_id, _me(request), request)
    inner = response.body_iterator
    cookie = request.cookies.get(COOKIE)

    async def while_signed_in() -> AsyncIterator[str | bytes | memoryview[int]]:
        checked = time.monotonic()
        try:
            async for chunk in inner:
                yield chunk
                if time.monotonic() - checked >= SESSION_RECHECK_S:
                    checked = time.monotonic()
                    if await anyio.to_thread.run_sync(ui.sessions.resolve, cookie, False) is None:
                        return
        finally:
            closing = getattr(inner, "aclose", None)
            if closing is not None:
                await closing()

    response.body_iterator = while_signed_in()
    return response


def _step_view(ui: Ui, caller: Principal, run_id: str, step: str) -> dict[str, Any]:
    run, steps, _, detail, workflow = _load(ui, caller, run_id)
    shown = next((s for s in detail["steps"] if s["step"] == step), None)
    if shown is None:
        raise refuse(404, f"run {run.id} has no step {step[:100]!r}")
    spec = workflow.steps.get(step) if workflow else None
    secrets = workflow.secret_params() if workflow else frozenset()
    inputs = {n: mask_fields(steps[n].output, secrets) for n in (spec.needs if spec else ()) if n in steps}
    why = None
    if shown["status"] in ("queued", "pending") and detail["status"] == RunStatus.RUNNING:
        why = monitor.why(ui.api, caller, run.id, step)
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
    return redirect(f"/ui/runs/{done.run_id}", "cancel" if done.published else "ended")


@page("/runs/{run_id}/retry", "ui_retry_run", Perm.OPERATE, ("POST",))
async def retry(request: Request, ui: Ui, form: dict[str, str], run_id: str) -> Response:
    done = await _sync(runs.retry_run, ui.api, run_id, _me(request), request, 5.0)
    return redirect(f"/ui/runs/{done.run_id}", "retried" if done.handled else "retry")
