"""Runs: list, show, start, cancel, retry, and the events stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from opentelemetry.trace import SpanKind

from miniflow.actors.middleware.tracing import inject, tracer
from miniflow.coordinator import resolve_params
from miniflow.persistence import RunRow
from miniflow.persistence import repository as repo
from miniflow.protocol.bounds import MAX_KEY_LEN
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import ApiError
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL, RunStatus

from ..views import iso, run_to_dict, secret_params, step_status
from . import errors
from .common import (
    COMMON,
    CONFLICT_DOC,
    EVENT_KEEPALIVE_S,
    EVENT_POLL_S,
    MAX_STREAMS,
    NOT_FOUND_DOC,
    START_WAIT_S,
    Api,
    ApiDep,
    Caller,
    _cursor,
    _uncursor,
    authorize,
)
from .errors import CONFLICT
from .models import (
    CancelRequest,
    Event,
    RunAction,
    RunDetail,
    RunPage,
    RunSummary,
    Started,
    StartRequest,
)
from .security import Principal

router = APIRouter(dependencies=[Depends(authorize)], responses=COMMON)


def _run(api: Api, conn: Any, caller: Principal, run_id: str) -> RunRow:
    run = repo.find_run(conn, run_id) if len(run_id) <= 36 else None
    if run is None:
        raise ApiError(404, Reason.UNKNOWN_RUN, f"no run {run_id[:40]!r} (give its id or a unique prefix of 6+)")
    caller.require_workflow(run.workflow)
    return run


def _detail(api: Api, conn: Any, run: RunRow, steps: dict[str, Any] | None = None,
            attempts: list[Any] | None = None) -> dict[str, Any]:
    workflow = api.catalog.workflow(conn, run.workflow, run.version)
    steps = repo.get_steps(conn, run.id) if steps is None else steps
    attempts = repo.get_attempts(conn, run.id) if attempts is None else attempts
    detail = run_to_dict(run, list(steps.values()), attempts,
                         workflow.secret_params() if workflow else frozenset(),
                         order=list(workflow.steps) if workflow else ())
    for s in detail["steps"]:
        row = steps.get(s["step"])
        s["queue_wait_ms"] = (round((row.started_at - row.queued_at).total_seconds() * 1000, 1)
                              if row and row.started_at and row.queued_at and row.started_at >= row.queued_at
                              else None)
    if api.settings.jaeger_url and detail["trace_id"]:
        detail["trace_url"] = f"{api.settings.jaeger_url.rstrip('/')}/trace/{detail['trace_id']}"
    return detail


@router.get("/runs", name="list_runs", response_model=RunPage, tags=["runs"])
def list_runs(api: ApiDep, caller: Caller, workflow: Annotated[str | None, Query(max_length=128)] = None,
              status: RunStatus | None = None, since: datetime | None = None, until: datetime | None = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              cursor: Annotated[str | None, Query(max_length=200)] = None,
              idempotency_key: Annotated[str | None, Query(max_length=MAX_KEY_LEN)] = None,
              text: Annotated[str | None, Query(max_length=100)] = None) -> RunPage:
    """Runs newest first, filtered by workflow (``*`` wildcards), status, creation time and ``text``
    (a prefix of the run id, an idempotency key, or a part of the workflow name or the error); or the
    run of one idempotency key. A scoped key sees only its workflows' runs."""
    if idempotency_key is not None:
        with api.database.connect() as conn:
            found = _run_of_key(conn, idempotency_key)
            shown = [RunSummary(**run_to_dict(found, secrets=secret_params(conn, found.workflow, found.version)))] \
                if found is not None and caller.covers(found.workflow) else []
        return RunPage(items=shown, next_cursor=None)
    patterns: list[str] = []
    if workflow:
        if "*" not in workflow:
            caller.require_workflow(workflow)
        patterns = [workflow]
    if caller.scope and not patterns:
        patterns = list(caller.scope)
    before = None
    if cursor:
        at, run_id = _uncursor(cursor, 2)
        try:
            before = (datetime.fromisoformat(str(at)), str(run_id))
        except ValueError:
            raise ApiError(400, errors.INVALID_REQUEST, "cursor is not one this API gave") from None
    with api.database.connect() as conn:
        rows = repo.page_runs(conn, limit=limit + 1, status=status, workflows=patterns, since=since, until=until,
                              before=before, text=text or None)
        rows = [r for r in rows if caller.covers(r.workflow)]
        items = [RunSummary(**run_to_dict(r, secrets=secret_params(conn, r.workflow, r.version)))
                 for r in rows[:limit]]
    more = len(rows) > limit
    return RunPage(items=items, next_cursor=_cursor(iso(rows[limit - 1].created_at), rows[limit - 1].id)
                   if more else None)


@router.get("/runs/{run_id}", name="show_run", response_model=RunDetail, tags=["runs"], responses=NOT_FOUND_DOC)
def show_run(api: ApiDep, run_id: str, caller: Caller) -> dict[str, Any]:
    """A run with its steps (in DAG order), attempts, outputs and errors (secrets masked), queue
    wait, trace id and Jaeger link."""
    with api.database.connect() as conn:
        return _detail(api, conn, _run(api, conn, caller, run_id))


@router.post("/runs", name="start_run", response_model=Started, status_code=201, tags=["runs"],
          responses={200: {"model": Started, "description": "The idempotency key already had this run"},
                     202: {"model": Started, "description": "Published; no run yet within the wait"},
                     **NOT_FOUND_DOC, **CONFLICT_DOC})


def start_run(api: ApiDep, body: StartRequest, caller: Caller, request: Request, response: Response,
              idempotency_key: Annotated[str | None, Header(max_length=MAX_KEY_LEN)] = None,
              wait: Annotated[float, Query(ge=0, le=30)] = START_WAIT_S) -> Started:
    """Start a run: published like any producer's start (confirmed by the broker), signed with the
    caller's key. The same ``Idempotency-Key`` returns the same run."""
    caller.require_workflow(body.workflow)
    key = idempotency_key or str(uuid.uuid4())
    if not key.isprintable() or not key.strip():
        raise ApiError(422, Reason.BAD_VALUE, "Idempotency-Key must be 1-200 printable characters")
    with api.database.connect() as conn:
        existing = _run_of_key(conn, key)
        if existing is None:
            found = api.catalog.workflow(conn, body.workflow, body.version)
            if found is None:
                deployed = repo.latest_version(conn, body.workflow) is not None
                raise ApiError(404, Reason.UNKNOWN_VERSION if deployed else Reason.UNKNOWN_WORKFLOW,
                               f"workflow {body.workflow!r} " + (f"has no version {body.version}" if deployed
                                                                 else "is not deployed"))
            resolve_params(found, body.params)
    if existing is not None:
        if existing.workflow != body.workflow:
            raise ApiError(409, CONFLICT, f"Idempotency-Key {key[:60]!r} belongs to a run of another workflow")
        response.status_code = 200
        request.state.audit_detail = f"existing run {existing.id}"
        return Started(run_id=existing.id, idempotency_key=key, message_id=None, existing=True,
                       status=existing.status)
    with tracer().start_as_current_span(f"start {body.workflow}", kind=SpanKind.PRODUCER, attributes={
            "messaging.system": "rabbitmq", "messaging.operation.type": "send",
            "messaging.destination.name": api.names.ingress, "miniflow.workflow": body.workflow}):
        traceparent = inject({}).get("traceparent")
        with api.publishers_or_503().take(caller.signer) as publisher:
            message_id = publisher.start_workflow(body.workflow, params=body.params, version=body.version,
                                                  idempotency_key=key, priority=body.priority,
                                                  traceparent=traceparent)
    run = _await_run(api, key, wait)
    request.state.audit_detail = f"{body.workflow} message {message_id}" + (f" run {run.id}" if run else "")
    if run is None:
        response.status_code = 202
    return Started(run_id=run.id if run else None, idempotency_key=key, message_id=message_id, existing=False,
                   status=run.status if run else None)


def _run_of_key(conn: Any, key: str) -> RunRow | None:
    run_id = repo.run_id_for_key(conn, key)
    return repo.get_run(conn, run_id) if run_id else None


def _await_run(api: Api, key: str, wait: float) -> RunRow | None:
    deadline = time.monotonic() + wait
    pause = 0.005
    while True:
        with api.database.connect() as conn:
            run = _run_of_key(conn, key)
        if run is not None or time.monotonic() >= deadline:
            return run
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


@router.post("/runs/{run_id}/cancel", name="cancel_run", response_model=RunAction, status_code=202, tags=["runs"],
          responses={200: {"model": RunAction, "description": "The run had ended: nothing was published"},
                     **NOT_FOUND_DOC})


def cancel_run(api: ApiDep, run_id: str, caller: Caller, request: Request, response: Response,
               body: CancelRequest | None = None) -> RunAction:
    """Ask the coordinator to cancel a run (no new steps; late results change nothing)."""
    with api.database.connect() as conn:
        run = _run(api, conn, caller, run_id)
    request.state.audit_detail = f"run {run.id}"
    if run.status in RUN_TERMINAL:
        response.status_code = 200
        return RunAction(run_id=run.id, action="cancel", published=False, message_id=None,
                         status=run.status, handled=None)
    with api.publishers_or_503().take(caller.signer) as publisher:
        message_id = publisher.cancel_run(run.id, body.reason if body else "")
    return RunAction(run_id=run.id, action="cancel", published=True, message_id=message_id,
                     status=run.status, handled=None)


@router.post("/runs/{run_id}/retry", name="retry_run", response_model=RunAction, status_code=202, tags=["runs"],
          responses={**NOT_FOUND_DOC, **CONFLICT_DOC})


def retry_run(api: ApiDep, run_id: str, caller: Caller, request: Request,
              wait: Annotated[float, Query(ge=0, le=30)] = START_WAIT_S) -> RunAction:
    """Re-run a failed or cancelled run from its unfinished steps, keeping succeeded outputs. Answers
    once the coordinator has re-opened the run (``handled``) or after ``wait`` seconds."""
    with api.database.connect() as conn:
        run = _run(api, conn, caller, run_id)
    request.state.audit_detail = f"run {run.id}"
    if run.status not in RETRYABLE:
        raise ApiError(409, CONFLICT, f"run {run.id} is {run.status}: only failed or cancelled runs are retried")
    with api.publishers_or_503().take(caller.signer) as publisher:
        message_id = publisher.retry_run(run.id)
    deadline = time.monotonic() + wait
    while True:  # the coordinator records each retry it acts on, in the transaction that re-opens the run
        with api.database.connect() as conn:
            handled = repo.request_handled(conn, message_id)
            status = (repo.get_run(conn, run.id) or run).status
        if handled or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return RunAction(run_id=run.id, action="retry", published=True, message_id=message_id, status=status,
                     handled=handled)


# One parsed server-sent event (OpenAPI 3.1 has no itemSchema: `schema` of text/event-stream is taken as
# the schema of each event by tools that read streams). `data` is a JSON text described by Event.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": ["run", "step", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": Event.model_json_schema()},
    },
}


@router.get("/runs/{run_id}/events", name="run_events", tags=["runs"], responses={
    200: {"description": "Server-sent events: `event:` run, step or end; `data:` one JSON object with the fields "
                         "kind, run_id, status, step, attempt, error; comment lines keep a quiet stream open. It "
                         "ends after the event of kind end.",
          "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}, **NOT_FOUND_DOC})


async def run_events(api: ApiDep, run_id: str, caller: Caller, request: Request) -> StreamingResponse:
    """Follow a run: its state now, then each change of the run and its steps, until it ends."""
    def first() -> RunRow:
        with api.database.connect() as conn:
            return _run(api, conn, caller, run_id)

    run = await anyio.to_thread.run_sync(first)
    if not api.streams.acquire(blocking=False):
        raise ApiError(503, errors.UNAVAILABLE, f"too many event streams (at most {MAX_STREAMS}); try again",
                       headers={"Retry-After": "5"})
    return StreamingResponse(_events(api, request, run.id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _snapshot(api: Api, run_id: str) -> tuple[RunRow | None, dict[str, tuple[str, int, str | None]]]:
    with api.database.connect() as conn:
        run = repo.get_run(conn, run_id)
        steps = repo.get_steps(conn, run_id)
    return run, {n: (step_status(s), s.attempt, s.error) for n, s in steps.items()}


def _changes(run: RunRow, steps: dict[str, tuple[str, int, str | None]], seen_run: str | None,
             seen: dict[str, tuple[str, int, str | None]]) -> list[Event]:
    """The events between what a stream has sent (``seen_run``, ``seen``, updated) and now."""
    out: list[Event] = []
    if run.status != seen_run:
        out.append(Event(kind="run", run_id=run.id, status=run.status, error=run.error))
    for name, state in steps.items():
        if seen.get(name) != state:
            seen[name] = state
            out.append(Event(kind="step", run_id=run.id, step=name, status=state[0], attempt=state[1], error=state[2]))
    if run.status in RUN_TERMINAL:
        out.append(Event(kind="end", run_id=run.id, status=run.status, error=run.error))
    return out


async def _events(api: Api, request: Request, run_id: str) -> AsyncIterator[str]:
    """The stream: the state now, then each change, polled every EVENT_POLL_S, a comment line every
    EVENT_KEEPALIVE_S of quiet (so proxies keep it open), until the run ends or the client leaves."""
    seen_run: str | None = None
    seen: dict[str, tuple[str, int, str | None]] = {}
    number = 0
    quiet_since = time.monotonic()
    try:
        while True:
            run, steps = await anyio.to_thread.run_sync(_snapshot, api, run_id)
            if run is None:
                return
            out = _changes(run, steps, seen_run, seen)
            seen_run = run.status
            for event in out:
                number += 1
                yield f"id: {number}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"
            if run.status in RUN_TERMINAL:
                return
            if out:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= EVENT_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)
    finally:
        api.streams.release()
