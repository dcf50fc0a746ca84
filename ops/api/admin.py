"""Dead letters, API keys and the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from miniflow.persistence.keys import create_client_key
from miniflow.persistence.repository import audit as arepo
from miniflow.persistence.repository import dead_letters as drepo
from miniflow.persistence.repository import keys as krepo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError, ConfigError

from ..views import iso
from . import errors
from .common import (
    COMMON,
    CONFLICT_DOC,
    NOT_FOUND_DOC,
    RAW_HEX_BYTES,
    ApiDep,
    Caller,
    _cursor,
    _uncursor,
    authorize,
)
from .errors import CONFLICT, NOT_FOUND
from .models import (
    AuditPage,
    AuditView,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterPage,
    KeyCreated,
    KeyRequest,
    KeyView,
)
from .security import Perm

router = APIRouter(dependencies=[Depends(authorize)], responses=COMMON)


def _letter(row: Any) -> dict[str, Any]:
    return {"id": row.id, "queue": row.queue, "message_id": row.message_id, "actor": row.actor, "code": row.code,
            "detail": row.detail, "raw_bytes": len(row.raw), "node": row.node, "created_at": iso(row.created_at)}


@router.get("/dead-letters", name="list_dead_letters", response_model=DeadLetterPage, tags=["dead letters"])
def list_dead_letters(api: ApiDep, caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                      cursor: Annotated[str | None, Query(max_length=200)] = None) -> DeadLetterPage:
    """Rejected messages, newest first: reason code, queue, time, size."""
    before = None
    if cursor:
        (before,) = _uncursor(cursor, 1)
        if not isinstance(before, int):
            raise ApiError(400, errors.INVALID_REQUEST, "cursor is not one this API gave")
    with api.database.connect() as conn:
        rows = drepo.list_dead_letters(conn, limit + 1, before_id=before)
    return DeadLetterPage(items=[DeadLetter(**_letter(r)) for r in rows[:limit]],
                          next_cursor=_cursor(rows[limit - 1].id) if len(rows) > limit else None)


@router.get("/dead-letters/{letter_id}", name="show_dead_letter", response_model=DeadLetterDetail,
         tags=["dead letters"], responses=NOT_FOUND_DOC)


def show_dead_letter(api: ApiDep, letter_id: Annotated[int, Path(ge=1, le=2**62)], caller: Caller) -> DeadLetterDetail:
    """One rejected message; its first 4 KiB as hex for admin keys (they may hold secret params)."""
    with api.database.connect() as conn:
        row = drepo.get_dead_letter(conn, letter_id) if 0 < letter_id < 2**62 else None
    if row is None:
        raise ApiError(404, NOT_FOUND, f"no dead letter {letter_id}")
    return DeadLetterDetail(**_letter(row), raw_hex=bytes(row.raw[:RAW_HEX_BYTES]).hex()
                            if caller.may(Perm.ADMIN) else None)


def _key(r: Any) -> dict[str, Any]:
    return {"kid": r.kid, "name": r.name, "role": r.role, "scope": [p for p in (r.scope or "").split(",") if p],
            "created_at": iso(r.created_at), "last_used_at": iso(r.last_used_at),
            "expires_at": iso(r.expires_at), "revoked_at": iso(r.revoked_at)}


@router.get("/keys", name="list_keys", response_model=list[KeyView], tags=["keys"])
def list_keys(api: ApiDep, caller: Caller) -> list[KeyView]:
    """Client keys: id, name, role, scope, created, last used, expiry, revoked (never a token)."""
    with api.database.connect() as conn:
        return [KeyView(**_key(r)) for r in krepo.list_api_keys(conn)]


@router.post("/keys", name="create_key", response_model=KeyCreated, status_code=201, tags=["keys"],
          responses=CONFLICT_DOC)


def create_key(api: ApiDep, body: KeyRequest, caller: Caller, request: Request) -> KeyCreated:
    """Create a key; its token is in this answer only."""
    from ..cli.keys import parse_lifetime
    if api.settings.data_keys is None:
        raise ApiError(503, errors.UNAVAILABLE, "this API has no data key (MINIFLOW_DATA_KEY): it cannot seal "
                                                "a new key's secret")
    until = utcnow() + parse_lifetime(body.expires) if body.expires else None
    try:
        with api.database.transaction() as conn:
            if krepo.api_key_by_name(conn, body.name) is not None:
                raise ApiError(409, CONFLICT, f"a key named {body.name[:100]!r} exists already")
            token, row = create_client_key(conn, api.settings.data_keys, body.name, body.role, until, body.scope)
    except ConfigError as exc:
        raise ApiError(422, errors.INVALID_REQUEST, str(exc)) from None
    request.state.audit_detail = f"key {row.kid} ({row.name}, {row.role})"
    return KeyCreated(**_key(row), token=token)


@router.delete("/keys/{kid}", name="revoke_key", response_model=KeyView, tags=["keys"], responses=NOT_FOUND_DOC)
def revoke_key(api: ApiDep, kid: Annotated[str, Path(max_length=12)], caller: Caller, request: Request) -> KeyView:
    """Revoke a key: refused by this API at once, everywhere else within 10 s."""
    with api.database.transaction() as conn:
        if len(kid) > 12 or not krepo.revoke_api_key(conn, kid, utcnow()):
            raise ApiError(404, NOT_FOUND, f"no key {kid[:12]!r} that is not revoked already")
        row = krepo.api_key(conn, kid)
    api.auth.forget(kid)
    request.state.audit_detail = f"key {kid}"
    assert row is not None
    return KeyView(**_key(row))


@router.get("/audit", name="list_audit", response_model=AuditPage, tags=["keys"])
def list_audit(api: ApiDep, caller: Caller, limit: Annotated[int, Query(ge=1, le=500)] = 50,
               key_id: Annotated[str | None, Query(max_length=12)] = None,
               outcome: Annotated[str | None, Query(pattern="^(ok|denied|failed)$")] = None,
               cursor: Annotated[str | None, Query(max_length=200)] = None) -> AuditPage:
    """The audit trail, newest first: every mutating call and every denied one."""
    before = None
    if cursor:
        (before,) = _uncursor(cursor, 1)
        if not isinstance(before, int):
            raise ApiError(400, errors.INVALID_REQUEST, "cursor is not one this API gave")
    with api.database.connect() as conn:
        rows = arepo.list_audit(conn, limit=limit + 1, before_id=before, key_id=key_id, outcome=outcome)
    items = [AuditView(id=r.id or 0, at=iso(r.at), key_id=r.key_id, key_name=r.key_name, role=r.role,
                       action=r.action, resource=r.resource, outcome=r.outcome, status=r.status, client=r.client,
                       detail=r.detail) for r in rows[:limit]]
    return AuditPage(items=items, next_cursor=_cursor(rows[limit - 1].id) if len(rows) > limit else None)

