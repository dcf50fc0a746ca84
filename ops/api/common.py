"""What the route modules share: the app state (Api), the pool of publishers, the authorisation
dependency, cursors."""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request

from miniflow.coordinator import Catalog
from miniflow.persistence import Database
from miniflow.protocol.auth import ClientKey
from miniflow.protocol.errors import ApiError
from miniflow.protocol.names import QueueNames
from miniflow.protocol.publisher import Publisher

from ..settings import Settings
from . import errors
from .errors import FORBIDDEN
from .models import (
    ErrorBody,
)
from .security import GLOBAL, POLICY, Authenticator, Perm, Principal

log = logging.getLogger("miniflow.api")

START_WAIT_S = 5.0  # how long POST /runs waits for the coordinator to create the run (?wait= changes it)
EVENT_POLL_S = 0.25  # how often an events stream looks at its run
EVENT_KEEPALIVE_S = 15.0
MAX_STREAMS = 200  # concurrent events streams per API process; more answer 503
RAW_HEX_BYTES = 4096
Responses = dict[int | str, dict[str, Any]]
COMMON: Responses = {
    400: {"model": ErrorBody, "description": "The request cannot be read (a body that is not JSON, a cursor this "
                                             "API did not give)"},
    401: {"model": ErrorBody, "description": "No valid API key"},
    403: {"model": ErrorBody, "description": "The key's role or scope does not allow this"},
    422: {"model": ErrorBody, "description": "The request is not valid"},
    429: {"model": ErrorBody, "description": "Too many failed sign-ins from this address"},
    503: {"model": ErrorBody, "description": "The database or the broker is not reachable"}}
NOT_FOUND_DOC: Responses = {404: {"model": ErrorBody, "description": "No such resource"}}
CONFLICT_DOC: Responses = {409: {"model": ErrorBody, "description": "The resource is not in a state that allows this"}}


class Publishers:
    """A few open publishers (pika connections are not thread-safe: one per call at a time)."""

    def __init__(self, url: str, namespace: str, size: int = 4) -> None:
        self.url, self.namespace, self.size = url, namespace, size
        self._free: queue.LifoQueue[Publisher] = queue.LifoQueue()

    @contextmanager
    def take(self, key: ClientKey | None) -> Iterator[Publisher]:
        try:
            publisher = self._free.get_nowait()
        except queue.Empty:
            publisher = Publisher(self.url, self.namespace, connect_timeout=5.0)
        publisher.key = key
        try:
            yield publisher
        finally:
            publisher.key = None
            if self._free.qsize() < self.size:
                self._free.put(publisher)
            else:
                publisher.close()

    def close(self) -> None:
        while True:
            try:
                self._free.get_nowait().close()
            except queue.Empty:
                return


@dataclass
class Api:
    """What the routes share."""

    settings: Settings
    names: QueueNames
    database: Database
    auth: Authenticator
    publishers: Publishers | None
    catalog: Catalog
    streams: threading.BoundedSemaphore

    def publishers_or_503(self) -> Publishers:
        if self.publishers is None:
            raise ApiError(503, errors.UNAVAILABLE, "this API has no broker (MINIFLOW_BROKER_URL): it cannot publish")
        return self.publishers


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, default=str).encode()).decode().rstrip("=")


def _uncursor(cursor: str, n: int) -> list[Any]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(parts, list) and len(parts) == n:
            return parts
    except ValueError:
        pass
    raise ApiError(400, errors.INVALID_REQUEST, "cursor is not one this API gave")


async def authorize(request: Request) -> Principal | None:
    """The caller of a route, checked against the route's entry in POLICY (deny by default)."""
    api: Api = request.app.state.api
    route = request.scope.get("route")
    name = getattr(route, "name", "")
    perm, kind = POLICY.get(name, (Perm.ADMIN, GLOBAL))  # not in the table: nobody (create_app checks)
    if perm == Perm.PUBLIC:
        return None
    principal = await anyio.to_thread.run_sync(api.auth.authenticate, request.headers.get("authorization"),
                                               _client(request))
    request.state.principal = principal
    if not principal.may(perm):
        raise ApiError(403, FORBIDDEN, f"key {principal.kid} ({principal.role}) may not {name}")
    if kind == GLOBAL and principal.scope:
        raise ApiError(403, FORBIDDEN, f"key {principal.kid} is scoped to workflows; {name} is not one's")
    return principal


async def caller(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # authorize ran first (an app dependency) and set it for every keyed route
        raise ApiError(401, errors.UNAUTHENTICATED, "a valid API key is needed")
    return principal


Caller = Annotated[Principal, Depends(caller)]



def api_of(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


ApiDep = Annotated[Api, Depends(api_of)]

