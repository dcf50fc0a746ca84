"""Health, readiness and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy import text

from miniflow.protocol.errors import BrokerUnavailable, MiniFlowError

from .common import (
    COMMON,
    ApiDep,
    Caller,
    authorize,
)
from .models import (
    Health,
    Ready,
    WhoAmI,
)

router = APIRouter(dependencies=[Depends(authorize)], responses=COMMON)


@router.get("/healthz", name="healthz", response_model=Health, tags=["health"])
def healthz() -> Health:
    """The process is up (for a load balancer's liveness check)."""
    return Health(status="ok")


@router.get("/readyz", name="readyz", response_model=Ready, tags=["health"],
         responses={503: {"model": Ready, "description": "The database or the broker is not reachable"}})


def readyz(api: ApiDep, response: Response) -> Ready:
    """The database and the broker answer (for a load balancer's readiness check)."""
    database = broker = "ok"
    try:
        with api.database.connect() as conn:
            conn.execute(text("select 1"))
    except MiniFlowError as exc:
        database = type(exc).__name__
    if api.publishers is None:
        broker = "not configured"
    else:
        try:
            with api.publishers.take(None) as publisher:
                publisher.check()
        except BrokerUnavailable as exc:
            broker = type(exc).__name__
    ready = database == "ok" and broker in ("ok", "not configured")
    response.status_code = 200 if ready else 503
    return Ready(status="ready" if ready else "not_ready", database=database, broker=broker)


@router.get("/whoami", name="whoami", response_model=WhoAmI, tags=["keys"])
def whoami(api: ApiDep, caller: Caller) -> WhoAmI:
    """The key this call was made with (never its secret)."""
    return WhoAmI(kid=caller.kid, name=caller.name, role=caller.role, scope=list(caller.scope))

