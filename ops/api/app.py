"""`miniflow api`: the HTTP API over the workflow manager (FastAPI; served by uvicorn).

It reads runs, workflows, schedules and dead letters from Postgres and never writes run state: a
start, cancel or retry is published to the broker like any producer's (signed with the caller's own
key, so the coordinator checks the caller's role too), and the coordinator acts on it. Every route
needs a key with a permission (security.py), every failure has one shape (errors.py), every mutating
call and every denied call is in the audit trail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from miniflow import __version__
from miniflow.coordinator import Catalog
from miniflow.persistence import AuditRow, Database
from miniflow.persistence.repository import audit as arepo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError, MiniFlowError
from miniflow.protocol.names import QueueNames

from ..settings import Settings
from . import admin, errors, health, monitor, runs, schedules, workflows
from .common import COMMON, MAX_STREAMS, Api, Publishers, _client
from .security import POLICY, Authenticator, FailureLimiter, Principal

log = logging.getLogger("miniflow.api")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def create_app(settings: Settings, *, database: Database | None = None, failure_limit: int = 20,
               ui: bool = True, secure_cookies: bool = False) -> FastAPI:
    """The API app for ``settings`` (its database, broker and namespace); ``failure_limit`` failed
    sign-ins per client address and minute, then 429 for the rest of that minute; ``ui``: serve the
    web UI under /ui too (``secure_cookies``: its cookies Secure over plain HTTP too, behind TLS)."""
    db = database or Database(settings.database_url)
    api = Api(settings, QueueNames(settings.namespace), db, Authenticator(db, limiter=FailureLimiter(failure_limit)),
              Publishers(settings.broker_url, settings.namespace) if settings.broker_url else None,
              Catalog(), threading.BoundedSemaphore(MAX_STREAMS))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if api.publishers is not None:
            api.publishers.close()

    app = FastAPI(title="MiniFlow API", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  responses=COMMON,
                  description="Start, watch and steer MiniFlow runs. Send `Authorization: Bearer mf_...`.")
    app.state.api = api
    errors.install(app)

    @app.middleware("http")
    async def audit(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        denied = response.status_code in (401, 403, 429)
        if request.method in MUTATING or denied:
            principal: Principal | None = getattr(request.state, "principal", None)
            route = request.scope.get("route")
            row = AuditRow(
                at=utcnow(), action=getattr(route, "name", None) or f"{request.method} (no route)",
                resource=f"{request.method} {request.url.path}",
                outcome="denied" if denied else ("ok" if response.status_code < 400 else "failed"),
                status=response.status_code, key_id=principal.kid if principal else None,
                key_name=principal.name if principal else None, role=principal.role if principal else None,
                client=_client(request), detail=getattr(request.state, "audit_detail", None))
            try:
                await anyio.to_thread.run_sync(_write_audit, db, row)
            except MiniFlowError as exc:
                log.error("audit entry not written (%s): %s %s -> %s", type(exc).__name__, row.action,
                          row.resource, row.status)
        return response

    for module in (health, workflows, runs, schedules, admin, monitor):
        app.router.routes.extend(module.router.routes)  # each route carries authorize (its router's)
    _check_policy(app)
    if ui:
        from ..ui.app import install
        install(app, api, secure_cookies=secure_cookies)  # the web UI under /ui (its own policy table)
    return app


def _check_policy(app: FastAPI) -> None:
    """Every API route has an entry in POLICY (deny by default); its operation id is its name."""
    missing = [r.name for r in app.routes if isinstance(r, APIRoute) and r.name not in POLICY]
    if missing:
        raise ConfigError(f"API routes without an authorisation policy: {', '.join(missing)}")
    for route in app.routes:
        if isinstance(route, APIRoute):
            route.operation_id = route.name


def _write_audit(db: Database, row: AuditRow) -> None:
    with db.transaction() as conn:
        arepo.insert_audit(conn, row)

