"""One error shape for every answer that is not a success::

    {"error": {"code": "unknown_run", "message": "no run 'abc'", "details": null}}

``code`` is stable: the rejection codes of ``protocol.codes.Reason`` where one fits (unknown_workflow,
invalid_params, ...), else one of the names below. ``message`` is for people and never holds a
secret, a key or a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from miniflow.protocol.errors import (
    ApiError,
    BrokerUnavailable,
    ConfigError,
    DatabaseUnavailable,
    DefinitionError,
    MessageRejected,
    PersistenceError,
)

log = logging.getLogger("miniflow.api")

UNAUTHENTICATED = "unauthenticated"
FORBIDDEN = "forbidden"
TOO_MANY_FAILURES = "too_many_failures"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
INVALID_REQUEST = "invalid_request"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"
_BY_STATUS = {400: INVALID_REQUEST, 401: UNAUTHENTICATED, 403: FORBIDDEN, 404: NOT_FOUND, 405: "method_not_allowed",
              409: CONFLICT, 422: INVALID_REQUEST, 429: TOO_MANY_FAILURES, 503: UNAVAILABLE}


def body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def _json(status: int, code: str, message: str, details: Any = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(code, message, details), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Map every failure to the one shape (and an unexpected one to a 500 that says nothing inside)."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg", ""))[:200]}
                   for e in exc.errors()[:20]]
        first = details[0] if details else {"where": "request", "problem": "invalid"}
        return _json(422, INVALID_REQUEST, f"{first['where']}: {first['problem']}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _BY_STATUS.get(exc.status_code, INVALID_REQUEST)
        message = "no such resource" if exc.status_code == 404 else str(exc.detail)[:200]
        return _json(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    _install_domain(app)


def _install_domain(app: FastAPI) -> None:
    """The MiniFlow errors (the one tree) as answers."""

    @app.exception_handler(MessageRejected)
    async def _rejected(_: Request, exc: MessageRejected) -> JSONResponse:
        return _json(422, exc.code, exc.detail[:500], {"field": exc.field} if exc.field else None)

    @app.exception_handler(DefinitionError)
    async def _definition(_: Request, exc: DefinitionError) -> JSONResponse:
        return _json(422, "invalid_definition", str(exc)[:2000])

    @app.exception_handler(ConfigError)
    async def _config(_: Request, exc: ConfigError) -> JSONResponse:
        return _json(400, INVALID_REQUEST, str(exc)[:500])

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return _json(503, UNAVAILABLE, "the database is not reachable; try again", headers={"Retry-After": "5"})

    @app.exception_handler(BrokerUnavailable)
    async def _broker_down(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        return _json(503, UNAVAILABLE, "the broker is not reachable; nothing was published; try again",
                     headers={"Retry-After": "5"})

    @app.exception_handler(PersistenceError)
    async def _persistence(_: Request, exc: PersistenceError) -> JSONResponse:
        log.error("database error in an API call: %s", type(exc).__name__)
        return _json(503, UNAVAILABLE, "the database refused the request; try again")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in an API call: %s", type(exc).__name__, exc_info=exc)
        return _json(500, INTERNAL, "internal error (logged by the server)")
