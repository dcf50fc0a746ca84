"""The monitors over HTTP: the workers registry, the queue monitor, "why isn't it running", the result
monitor and the whole snapshot `miniflow monitor` shows. The same view functions as the CLI's
(ops/monitor); answers are their ``to_dict()``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError, BrokerUnavailable, ConfigError

from ..monitor.results import result_summary
from ..monitor.snapshot import queue_view, take
from ..monitor.why import explain
from ..monitor.workers import count_by_state, list_workers
from . import errors
from .common import COMMON, NOT_FOUND_DOC, ApiDep, Caller, authorize
from .runs import _run

router = APIRouter(dependencies=[Depends(authorize)], responses=COMMON)
Window = Annotated[float, Query(gt=0, le=366 * 86400, description="The window in seconds (default one hour)")]


@router.get("/workers", name="list_workers", tags=["monitor"], response_model=dict[str, Any])
def workers(api: ApiDep, caller: Caller, everything: Annotated[bool, Query(alias="all")] = False) -> dict[str, Any]:
    """Every worker and timer process: alive, late, gone or stopped, its queues and what it runs now."""
    views = list_workers(api.database, api.names.namespace, everything=everything)
    return {"workers": [v.to_dict() for v in views], "by_state": count_by_state(views)}


@router.get("/queues", name="list_queues", tags=["monitor"], response_model=dict[str, Any],
            responses={503: {"description": "No broker, or it does not answer"}})
def queues(api: ApiDep, caller: Caller) -> dict[str, Any]:
    """Depth, ready vs unacknowledged, consumers and rates of every MiniFlow queue."""
    url = api.settings.broker_url
    if not url:
        raise ApiError(503, errors.UNAVAILABLE, "this API has no broker (MINIFLOW_BROKER_URL): no queue figures")
    try:
        return queue_view(api.database, api.catalog, api.names, url, management=api.settings.rabbitmq_api_url).to_dict()
    except BrokerUnavailable as exc:
        raise ApiError(503, errors.UNAVAILABLE, str(exc)) from None


@router.get("/runs/{run_id}/steps/{step}/why", name="explain_step", tags=["monitor"], response_model=dict[str, Any],
            responses=NOT_FOUND_DOC)
def why(api: ApiDep, caller: Caller, run_id: str, step: str) -> dict[str, Any]:
    """Why a step is not running: its queue, its wait, what is ahead of it, who consumes that queue, and
    the likely causes, most likely first."""
    with api.database.connect() as conn:
        run = _run(api, conn, caller, run_id)
    try:
        answer = explain(api.database, api.catalog, api.names, run.id, step, broker_url=api.settings.broker_url)
    except ConfigError as exc:
        raise ApiError(404, errors.NOT_FOUND, str(exc)) from None
    return answer.to_dict()


@router.get("/stats", name="result_stats", tags=["monitor"], response_model=dict[str, Any])
def stats(api: ApiDep, caller: Caller, window: Window = 3600.0,
          workflow: Annotated[str | None, Query(max_length=128)] = None,
          top_errors: Annotated[int, Query(ge=0, le=100)] = 5) -> dict[str, Any]:
    """The result monitor: per workflow and per step over the window, runs by status, success rate,
    p50/p95/p99 durations, queue wait, attempts and the top error types; dead letters by reason."""
    since: datetime = utcnow() - timedelta(seconds=window)
    return result_summary(api.database, since=since, workflow=workflow, top_errors=top_errors).to_dict()


@router.get("/monitor", name="monitor_snapshot", tags=["monitor"], response_model=dict[str, Any])
def snapshot(api: ApiDep, caller: Caller) -> dict[str, Any]:
    """What `miniflow monitor` shows: workers, queues, runs in flight, recent outcomes, the slowest steps
    and the dead letters of the last 15 minutes."""
    return take(api.database, api.catalog, api.names, api.settings.broker_url,
                management=api.settings.rabbitmq_api_url).to_dict()
