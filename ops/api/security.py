"""Who is calling and what they may do: API keys, roles, scopes, and a limit on failed sign-ins.

A caller sends ``Authorization: Bearer mf_<key id>_<secret>`` (a key from `miniflow keys create`).
Only the key's SHA-256 is stored; it is compared in constant time. Every way a key can be wrong
(missing, malformed, unknown, wrong secret, revoked, expired) gets the same 401, so an answer never
tells whether a key exists. A client address with too many failures in a minute gets 429 for the
rest of that minute, before any key is looked at.

Deny by default: every route has an entry in :data:`POLICY` (``create_app`` refuses to build an app
with a route that has none), and a role holds the permissions in :data:`GRANTS`:

    viewer    read (secrets masked)
    producer  start
    operator  read, start, operate (cancel, retry, trigger/pause/resume schedules)
    admin     all of the above and admin (deploy, schedules add/delete, keys, audit, raw dead letters)
    executor  nothing here (it signs step results on the broker only)

A key may have a scope, workflow name patterns such as ``billing-*``: it then acts only on those
workflows (other runs, schedules and workflows answer 403; lists show only its workflows), and never
on what belongs to no workflow (keys, audit, dead letters).
"""

from __future__ import annotations

import fnmatch
import hmac
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import StrEnum

from miniflow.persistence import Database
from miniflow.persistence.repository import keys as krepo
from miniflow.persistence.rows import ApiKeyRow
from miniflow.protocol.auth import ADMIN, EXECUTOR, OPERATOR, PRODUCER, VIEWER, ClientKey, token_hash
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ApiError, ConfigError

from .errors import FORBIDDEN, TOO_MANY_FAILURES, UNAUTHENTICATED


class Perm(StrEnum):
    PUBLIC = "public"  # no key needed (health, readiness, the OpenAPI document)
    READ = "read"
    START = "start"
    OPERATE = "operate"
    ADMIN = "admin"


GRANTS: dict[str, frozenset[Perm]] = {
    VIEWER: frozenset({Perm.READ}),
    PRODUCER: frozenset({Perm.START}),
    OPERATOR: frozenset({Perm.READ, Perm.START, Perm.OPERATE}),
    ADMIN: frozenset({Perm.READ, Perm.START, Perm.OPERATE, Perm.ADMIN}),
    EXECUTOR: frozenset(),
}

# What a route acts on, for scoped keys: one workflow's things (checked against the scope), a list
# (filtered to the scope), the caller itself, or nothing of a workflow's (refused to scoped keys).
WORKFLOW, LIST, SELF, GLOBAL = "workflow", "list", "self", "global"

# Route name -> (permission, what it acts on). Every route of the app must be here; the authorisation
# matrix test (tests/test_api.py) is built from this table and the app's routes.
POLICY: dict[str, tuple[Perm, str]] = {
    "healthz": (Perm.PUBLIC, GLOBAL),
    "readyz": (Perm.PUBLIC, GLOBAL),
    "whoami": (Perm.READ, SELF),
    "list_workflows": (Perm.READ, LIST),
    "show_workflow": (Perm.READ, WORKFLOW),
    "show_workflow_version": (Perm.READ, WORKFLOW),
    "deploy_workflow": (Perm.ADMIN, WORKFLOW),
    "list_runs": (Perm.READ, LIST),
    "show_run": (Perm.READ, WORKFLOW),
    "run_events": (Perm.READ, WORKFLOW),
    "start_run": (Perm.START, WORKFLOW),
    "cancel_run": (Perm.OPERATE, WORKFLOW),
    "retry_run": (Perm.OPERATE, WORKFLOW),
    "list_schedules": (Perm.READ, LIST),
    "show_schedule": (Perm.READ, WORKFLOW),
    "add_schedule": (Perm.ADMIN, WORKFLOW),
    "pause_schedule": (Perm.OPERATE, WORKFLOW),
    "resume_schedule": (Perm.OPERATE, WORKFLOW),
    "trigger_schedule": (Perm.OPERATE, WORKFLOW),
    "delete_schedule": (Perm.ADMIN, WORKFLOW),
    "list_dead_letters": (Perm.READ, GLOBAL),
    "show_dead_letter": (Perm.READ, GLOBAL),
    "list_keys": (Perm.ADMIN, GLOBAL),
    "create_key": (Perm.ADMIN, GLOBAL),
    "revoke_key": (Perm.ADMIN, GLOBAL),
    "list_audit": (Perm.ADMIN, GLOBAL),
    "list_workers": (Perm.READ, GLOBAL),
    "list_queues": (Perm.READ, GLOBAL),
    "explain_step": (Perm.READ, WORKFLOW),
    "result_stats": (Perm.READ, GLOBAL),
    "monitor_snapshot": (Perm.READ, GLOBAL),
}

BAD_KEY = "a valid API key is needed: Authorization: Bearer mf_... (`miniflow keys create`)"


@dataclass(frozen=True)
class Principal:
    """A caller whose key checked out."""

    kid: str
    name: str
    role: str
    scope: tuple[str, ...] = ()  # workflow name patterns; empty: every workflow
    signer: ClientKey | None = field(default=None, repr=False, compare=False)  # signs what the caller asks

    def may(self, perm: Perm) -> bool:
        return perm == Perm.PUBLIC or perm in GRANTS.get(self.role, frozenset())

    def covers(self, workflow: str) -> bool:
        return not self.scope or any(fnmatch.fnmatchcase(workflow, p) for p in self.scope)

    def require_workflow(self, workflow: str) -> None:
        if not self.covers(workflow):
            raise ApiError(403, FORBIDDEN, f"key {self.kid} is scoped to {','.join(self.scope)}")


class FailureLimiter:
    """At most ``limit`` failed sign-ins per client address in a sliding minute. Remembers at most
    ``addresses`` addresses (the oldest forgotten first), so a flood of addresses costs bounded memory."""

    def __init__(self, limit: int = 20, window_s: float = 60.0, addresses: int = 10_000) -> None:
        self.limit, self.window_s, self.addresses = limit, window_s, addresses
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._seen.get(client)
        if times is not None:
            while times and times[0] <= now - self.window_s:
                times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if times is None or len(times) < self.limit:
                return None
            return max(1.0, times[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if times is None:
                times = self._seen[client] = deque(maxlen=self.limit)
                while len(self._seen) > self.addresses:
                    self._seen.popitem(last=False)
            self._seen.move_to_end(client)
            times.append(now)


class Authenticator:
    """Checks bearer keys against the api_keys table, with a short cache so a read costs no query
    (a revoked key is refused within ``cache_s`` seconds), and records when a key was last used (at
    most once a minute per key)."""

    def __init__(self, database: Database, *, cache_s: float = 5.0, limiter: FailureLimiter | None = None) -> None:
        self.database, self.cache_s = database, cache_s
        self.limiter = limiter or FailureLimiter()
        self._rows: dict[str, tuple[ApiKeyRow | None, float]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def _row(self, kid: str) -> ApiKeyRow | None:
        now = time.monotonic()
        with self._lock:
            cached = self._rows.get(kid)
        if cached is not None and now - cached[1] < self.cache_s:
            return cached[0]
        with self.database.connect() as conn:
            row = krepo.api_key(conn, kid)
        with self._lock:
            if len(self._rows) > 10_000:
                self._rows.clear()
            self._rows[kid] = (row, now)
        return row

    def forget(self, kid: str) -> None:
        """Drop a key from the cache (after a revoke through this process)."""
        with self._lock:
            self._rows.pop(kid, None)

    def authenticate(self, authorization: str | None, client: str) -> Principal:
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise ApiError(429, TOO_MANY_FAILURES, "too many failed sign-ins from this address; try again later",
                           headers={"Retry-After": str(int(wait + 0.999))})
        principal = self._check(authorization)
        if principal is None:
            self.limiter.failed(client)
            raise ApiError(401, UNAUTHENTICATED, BAD_KEY, headers={"WWW-Authenticate": "Bearer"})
        return principal

    def _check(self, authorization: str | None) -> Principal | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or len(token) > 200:
            return None
        try:
            key = ClientKey.from_token(token.strip())
        except ConfigError:
            return None
        row = self._row(key.kid)
        if row is None or not hmac.compare_digest(row.token_hash, token_hash(token.strip())):
            return None
        now = utcnow()
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        self._touch(row.kid)
        scope = tuple(p for p in (row.scope or "").split(",") if p)
        return Principal(row.kid, row.name, row.role, scope, ClientKey(key.kid, row.role, key.mac_key))

    def _touch(self, kid: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(kid, -1e9) < 60.0:
                return
            self._touched[kid] = now
        try:
            with self.database.transaction() as conn:
                krepo.touch_api_key(conn, kid, utcnow())
        except Exception:  # noqa: BLE001  (a last-used time is not worth failing a call over)
            pass
