"""Schedules: list, show, add, pause, resume, trigger, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from miniflow.coordinator import Scheduler, parse_schedule
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import schedules as srepo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError

from ..views import iso, schedule_to_dict, secret_params
from .common import (
    COMMON,
    CONFLICT_DOC,
    NOT_FOUND_DOC,
    Api,
    ApiDep,
    Caller,
    authorize,
)
from .errors import CONFLICT, NOT_FOUND
from .models import (
    Schedule,
    ScheduleChanged,
    ScheduleRequest,
    Tick,
)
from .security import Principal

router = APIRouter(dependencies=[Depends(authorize)], responses=COMMON)


def _schedule(conn: Any, caller: Principal, name: str) -> Any:
    row = srepo.get_schedule(conn, name)
    if row is None:
        raise ApiError(404, NOT_FOUND, f"schedule {name[:100]!r} does not exist")
    caller.require_workflow(row.workflow)
    return row


@router.get("/schedules", name="list_schedules", response_model=list[Schedule], tags=["schedules"])
def list_schedules(api: ApiDep, caller: Caller) -> list[dict[str, Any]]:
    with api.database.connect() as conn:
        return [schedule_to_dict(r, secrets=secret_params(conn, r.workflow, r.version))
                for r in srepo.list_schedules(conn) if caller.covers(r.workflow)]


@router.get("/schedules/{name}", name="show_schedule", response_model=Schedule, tags=["schedules"],
         responses=NOT_FOUND_DOC)


def show_schedule(api: ApiDep, name: str, caller: Caller, next: Annotated[int, Query(ge=1, le=100)] = 5,
                  ticks: Annotated[int, Query(ge=0, le=500)] = 20) -> dict[str, Any]:
    """A schedule with its next fire times and its tick ledger (fired, skipped, missed, why)."""
    with api.database.connect() as conn:
        row = _schedule(conn, caller, name)
        ledger = srepo.recent_ticks(conn, row.id, ticks) if ticks else []
        runs = {t.idempotency_key: repo.run_id_for_key(conn, t.idempotency_key) for t in ledger
                if t.idempotency_key}
        detail = schedule_to_dict(row, next, secret_params(conn, row.workflow, row.version))
    detail["ticks"] = [Tick(due_at=iso(t.due_at), kind=t.kind, outcome=t.outcome, idempotency_key=t.idempotency_key,
                            run_id=runs.get(t.idempotency_key or ""), fired_at=iso(t.fired_at),
                            lateness_ms=t.lateness_ms, detail=t.detail, node=t.node) for t in ledger]
    return detail


@router.post("/schedules", name="add_schedule", response_model=Schedule, status_code=201, tags=["schedules"],
          responses={**NOT_FOUND_DOC, **CONFLICT_DOC})


def add_schedule(api: ApiDep, body: ScheduleRequest, caller: Caller, request: Request) -> dict[str, Any]:
    caller.require_workflow(body.workflow)
    spec = parse_schedule({
        "name": body.name, "cron": body.cron, "timezone": body.timezone, "params": body.params,
        "version": body.version, "start": body.start, "end": body.end, "jitter": body.jitter,
        "overlap": body.overlap, "priority": body.priority, "paused": body.paused,
        "catch_up": body.catch_up.model_dump()}, body.workflow, "api")
    scheduler = Scheduler(api.names, keys=api.settings.data_keys)
    with api.database.transaction() as conn:
        if not body.replace and srepo.get_schedule(conn, body.name) is not None:
            raise ApiError(409, CONFLICT, f"schedule {body.name!r} exists (send replace: true to replace it)")
        row, _ = scheduler.add(conn, spec, utcnow(), replace=body.replace, source=f"api:{caller.name}")
        shown = schedule_to_dict(row, 5, secret_params(conn, row.workflow, row.version))
    request.state.audit_detail = f"schedule {row.name} of {row.workflow}"
    return shown


def _change(api: Api, caller: Principal, name: str, action: str) -> datetime | None:
    scheduler = Scheduler(api.names)
    with api.database.transaction() as conn:
        _schedule(conn, caller, name)
        if action == "delete":
            scheduler.delete(conn, name)
        elif action == "pause":
            scheduler.pause(conn, name, utcnow())
        else:
            return scheduler.resume(conn, name, utcnow())
    return None


@router.post("/schedules/{name}/pause", name="pause_schedule", response_model=ScheduleChanged, tags=["schedules"],
          responses=NOT_FOUND_DOC)


def pause_schedule(api: ApiDep, name: str, caller: Caller) -> ScheduleChanged:
    _change(api, caller, name, "pause")
    return ScheduleChanged(schedule=name, state="paused")


@router.post("/schedules/{name}/resume", name="resume_schedule", response_model=ScheduleChanged,
          tags=["schedules"], responses=NOT_FOUND_DOC)


def resume_schedule(api: ApiDep, name: str, caller: Caller) -> ScheduleChanged:
    due = _change(api, caller, name, "resume")
    return ScheduleChanged(schedule=name, state="active", next_due_at=iso(due))


@router.delete("/schedules/{name}", name="delete_schedule", response_model=ScheduleChanged, tags=["schedules"],
            responses=NOT_FOUND_DOC)


def delete_schedule(api: ApiDep, name: str, caller: Caller) -> ScheduleChanged:
    """Delete a schedule and its ledger (the runs it started stay)."""
    _change(api, caller, name, "delete")
    return ScheduleChanged(schedule=name, state="deleted")


@router.post("/schedules/{name}/trigger", name="trigger_schedule", response_model=ScheduleChanged, status_code=202,
          tags=["schedules"], responses=NOT_FOUND_DOC)


def trigger_schedule(api: ApiDep, name: str, caller: Caller, request: Request) -> ScheduleChanged:
    """Fire once now (a ledger row of kind 'manual'), signed as the timer would sign it."""
    from miniflow.actors import make_broker
    from miniflow.actors.relay import Relay

    from ..signing import core_keys
    with api.database.connect() as conn:
        _schedule(conn, caller, name)  # 404 or 403 before anything else
    if api.settings.broker_url is None:
        api.publishers_or_503()
    with api.database.transaction() as conn:
        _schedule(conn, caller, name)
        key, outgoing = Scheduler(api.names, node="api", keys=api.settings.data_keys).trigger(conn, name, utcnow())
    broker = make_broker(api.settings.broker_url, api.names, keys=core_keys(api.settings, api.database))
    try:
        relay = Relay(broker, api.database, namespace=api.names.namespace)
        relay.publish(outgoing)
        relay.delete_published()
    finally:
        broker.close()
    request.state.audit_detail = f"idempotency key {key}"
    return ScheduleChanged(schedule=name, state="triggered", idempotency_key=key)

