"""Server-side sessions of the web UI, stored in Postgres (table ui_sessions) so they survive a restart
of `miniflow api` and an admin can end them.

Signing in checks an API key exactly as the HTTP API does (the same failure limit per address, the
same single answer for every way a key can be wrong). The browser then holds only a random cookie
token (HttpOnly, SameSite=Strict, Secure over HTTPS); the table keeps its SHA-256, never the token,
and the key's MAC key sealed with AES-GCM under a key derived from the cookie's token, so the
session can sign the starts, cancels and retries its user asks for, while a copy of the table
cannot. A session ends at sign-out, on an admin's revoke, after ``idle_s`` without a request, at
``absolute_s`` after sign-in, and within the key cache's 5 s once its key is revoked or expires.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from miniflow.persistence import Database
from miniflow.persistence.repository import sessions as srepo
from miniflow.persistence.rows import SessionRow
from miniflow.protocol.auth import ClientKey
from miniflow.protocol.clock import utcnow

from ..api.security import Authenticator, Perm, Principal

COOKIE = "mf_session"
IDLE_S = 30 * 60.0  # a session unused this long is over
ABSOLUTE_S = 12 * 3600.0  # and every session is over this long after sign-in
TOUCH_EVERY_S = 60.0  # last_seen is written at most this often per session
PRUNE_AFTER = timedelta(days=7)  # ended sessions are forgotten this long after they ended
_CONTEXT = b"miniflow-ui-session-v1:"


def _hash(token: str) -> str:
    return hashlib.sha256(_CONTEXT + token.encode()).hexdigest()


def _seal_key(token: str) -> bytes:
    return hashlib.sha256(b"seal:" + _CONTEXT + token.encode()).digest()


@dataclass(frozen=True)
class Session:
    """A signed-in browser: who (the principal, with the key that signs its requests), its CSRF token."""

    id: str
    principal: Principal
    csrf: str

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf.encode(), (sent or "").encode())


class Sessions:
    def __init__(self, database: Database, auth: Authenticator, *, idle_s: float = IDLE_S,
                 absolute_s: float = ABSOLUTE_S) -> None:
        self.database, self.auth, self.idle_s, self.absolute_s = database, auth, idle_s, absolute_s
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self, token: str, client: str, user_agent: str) -> tuple[str, Session]:
        """Sign in with an API key: the cookie token and the session. Raises the API's ApiError (401,
        429, or 403 for a key whose role cannot read)."""
        principal = self.auth.authenticate(f"Bearer {token.strip()}", client)
        if not principal.may(Perm.READ):
            from miniflow.protocol.errors import ApiError

            from ..api.errors import FORBIDDEN
            raise ApiError(403, FORBIDDEN, f"a {principal.role} key cannot read: the web UI needs a viewer, "
                                           "operator or admin key")
        assert principal.signer is not None
        cookie = secrets.token_urlsafe(32)
        session_id = secrets.token_hex(16)
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(_seal_key(cookie)).encrypt(nonce, principal.signer.mac_key, session_id.encode())
        now = utcnow()
        row = SessionRow(id=session_id, token_hash=_hash(cookie), key_id=principal.kid, key_name=principal.name[:100],
                         role=principal.role, scope=",".join(principal.scope) or None, sealed_mac=sealed,
                         csrf=secrets.token_urlsafe(32), client=client[:64], user_agent=user_agent[:200],
                         created_at=now, last_seen=now, expires_at=now + timedelta(seconds=self.absolute_s))
        with self.database.transaction() as conn:
            srepo.insert_session(conn, row)
            srepo.prune_sessions(conn, now - PRUNE_AFTER)
        return cookie, Session(session_id, principal, row.csrf)

    def resolve(self, cookie: str | None, active: bool = True) -> Session | None:
        """The open session of a cookie token, or None (no cookie, unknown, ended, idle, expired, or its
        key revoked or expired). ``active``: a user's request, which keeps the session from idling (a
        page's own refresh is not one)."""
        if not cookie or len(cookie) > 100:
            return None
        with self.database.connect() as conn:
            row = srepo.session_by_token_hash(conn, _hash(cookie))
        now = utcnow()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            return None
        if (now - row.last_seen).total_seconds() > self.idle_s:
            return None
        key = self.auth._row(row.key_id)  # the key cache: a revoked key ends its sessions within its 5 s
        if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            return None
        try:
            mac = AESGCM(_seal_key(cookie)).decrypt(row.sealed_mac[:12], row.sealed_mac[12:], row.id.encode())
        except (InvalidTag, ValueError):
            return None
        if active:
            self._touch(row.id)
        scope = tuple(p for p in (row.scope or "").split(",") if p)
        principal = Principal(row.key_id, row.key_name, row.role, scope, ClientKey(row.key_id, row.role, mac))
        return Session(row.id, principal, row.csrf)

    def _touch(self, session_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(session_id, -1e9) < TOUCH_EVERY_S:
                return
            if len(self._touched) > 10_000:
                self._touched.clear()
            self._touched[session_id] = now
        with self.database.transaction() as conn:
            srepo.touch_session(conn, session_id, utcnow())

    def end(self, session_id: str) -> bool:
        with self._lock:
            self._touched.pop(session_id, None)
        with self.database.transaction() as conn:
            return srepo.end_session(conn, session_id, utcnow())

    def list_open(self) -> list[SessionRow]:
        now = utcnow()
        with self.database.connect() as conn:
            rows = srepo.open_sessions(conn, now)
        def key_valid(kid: str) -> bool:
            key = self.auth._row(kid)
            return key is not None and key.revoked_at is None and (key.expires_at is None or key.expires_at > now)

        return [r for r in rows if (now - r.last_seen).total_seconds() <= self.idle_s and key_valid(r.key_id)]
