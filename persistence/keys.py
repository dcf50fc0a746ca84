"""The keys of message authentication, kept in the database: the core's Ed25519 signing keys and
the client keys, both sealed with the data key (persistence/sealing.py).

Core processes (coordinator, results, timer) read them through :class:`DatabaseKeys`, a cached
:class:`~miniflow.protocol.auth.KeySource`: a key created, activated, retired or revoked takes effect
everywhere within ``REFRESH_S``, without a restart; a key id not yet known is looked up at once (at
most once a second, so a flood of made-up key ids costs no more than that).

Rotation of the core key, without downtime:

    keys core add         a new key, state ``next``: verified, not yet signing
    (give executors the new public key: MINIFLOW_CORE_PUBLIC_KEYS, from `keys core public`)
    keys core activate K  K signs from now on; the old current key becomes ``accepted``
    keys core retire OLD  once messages it signed have drained (delayed retries wait up to a day)
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Connection

from miniflow.protocol.auth import (
    CLIENT_ROLES,
    ClientKey,
    CoreKey,
    b64,
    mac_key_of,
    new_token,
    public_key,
    token_hash,
    unb64,
)
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError, MiniFlowError, SealError

from .db import Database
from .repository import keys as krepo
from .rows import ApiKeyRow, SigningKeyRow
from .sealing import PREFIX, KeyRing

logger = logging.getLogger("miniflow.keys")
REFRESH_S = 10.0
MISS_REFRESH_S = 1.0
CURRENT, NEXT, ACCEPTED, RETIRED = "current", "next", "accepted", "retired"


@dataclass(frozen=True)
class _Loaded:
    public: dict[str, Ed25519PublicKey]
    core: dict[str, CoreKey]
    current: CoreKey | None
    clients: dict[str, ClientKey]
    expires: dict[str, datetime]


class DatabaseKeys:
    """The keys in the database, as a KeySource. ``core`` is False for a process that must not hold
    the core's private keys (it then only verifies core signatures)."""

    def __init__(self, db: Database, data_keys: KeyRing | None, *, core: bool = True,
                 refresh_s: float = REFRESH_S) -> None:
        if data_keys is None:
            raise ConfigError("message authentication keeps its keys sealed with the data key: set "
                              "MINIFLOW_DATA_KEY or MINIFLOW_DATA_KEY_FILE (or MINIFLOW_AUTH=off)")
        self.db = db
        self.data_keys = data_keys
        self.holds_core = core
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._loaded = self._load()
        self._at = self._missed = time.monotonic()

    def _load(self) -> _Loaded:
        with self.db.connect() as conn:
            signing = krepo.signing_keys_all(conn)
            clients = krepo.list_api_keys(conn)
        public = {r.kid: public_key(r.public, f"signing key {r.kid}") for r in signing if r.state != RETIRED}
        core = {r.kid: self._open_core(r) for r in signing if r.state != RETIRED} if self.holds_core else {}
        current = next((core[r.kid] for r in signing if r.state == CURRENT and r.kid in core), None)
        live = [r for r in clients if r.revoked_at is None]
        return _Loaded(public, core, current,
                       {r.kid: ClientKey(r.kid, r.role, self._open_mac(r)) for r in live},
                       {r.kid: r.expires_at for r in live if r.expires_at is not None})

    def _open_core(self, row: SigningKeyRow) -> CoreKey:
        try:
            return CoreKey.from_seed(row.kid, unb64(self.data_keys.open(row.private, f"signing key {row.kid}")))
        except SealError as exc:
            raise ConfigError(f"core signing key {row.kid} cannot be opened: {exc}") from None

    def _open_mac(self, row: ApiKeyRow) -> bytes:
        try:
            return unb64(self.data_keys.open(row.mac_key, f"api key {row.kid}"))
        except SealError as exc:
            raise ConfigError(f"key {row.kid} ({row.name}) cannot be opened: {exc}") from None

    def _current(self, missing: bool = False) -> _Loaded:
        now = time.monotonic()
        due = now - self._at > self.refresh_s or (missing and now - self._missed > MISS_REFRESH_S)
        if due and self._lock.acquire(blocking=False):
            try:
                self._missed = now if missing else self._missed
                self._loaded, self._at = self._load(), now
            except MiniFlowError as exc:  # keep verifying with what we had: the database may come back
                self._at = now
                logger.warning("could not refresh the keys (keeping the ones loaded): %s", exc)
            finally:
                self._lock.release()
        return self._loaded

    def refresh(self) -> None:
        self._loaded, self._at = self._load(), time.monotonic()

    # -- KeySource --------------------------------------------------------------------------------
    def core_public(self, kid: str) -> Ed25519PublicKey | None:
        found = self._current().public.get(kid)
        return found if found is not None else self._current(missing=True).public.get(kid)

    def client(self, kid: str) -> ClientKey | None:
        loaded = self._current()
        if kid not in loaded.clients:
            loaded = self._current(missing=True)
        expires = loaded.expires.get(kid)
        if expires is not None and expires <= utcnow():
            return None
        return loaded.clients.get(kid)

    def core(self, kid: str) -> CoreKey | None:
        return self._current().core.get(kid) or self._current(missing=True).core.get(kid)

    def core_signer(self) -> CoreKey | None:
        return self._current().current

    def signer(self) -> CoreKey | None:
        return self.core_signer()

    def require_signer(self) -> CoreKey:
        signer = self.core_signer()
        if signer is None:
            raise ConfigError("message authentication is on but the database holds no current core signing key: "
                              "run `miniflow keys core init` once (or set MINIFLOW_AUTH=off to run without it, "
                              "which lets anyone who may publish to the vhost steer runs)")
        return signer


# -- management (the `miniflow keys` commands) ----------------------------------------------------
def add_core_key(conn: Connection, ring: KeyRing, *, first: bool = False) -> CoreKey:
    """A new core key: ``current`` when it is the first (``init``), else ``next``."""
    rows = krepo.lock_signing_keys(conn)
    live = [r for r in rows if r.state != RETIRED]
    if first and live:
        raise ConfigError(f"the database already has core signing key(s) {', '.join(r.kid for r in live)}: "
                          "use `miniflow keys core add` and `activate` to rotate")
    if not first and not live:
        raise ConfigError("there is no core signing key yet: run `miniflow keys core init`")
    key, now = CoreKey.generate(), utcnow()
    krepo.insert_signing_key(conn, SigningKeyRow(kid=key.kid, public=key.public_b64,
                                                 private=ring.seal(b64(key.seed), f"signing key {key.kid}"),
                                                 state=CURRENT if first else NEXT, created_at=now, changed_at=now))
    return key


def activate_core_key(conn: Connection, kid: str) -> str | None:
    """Make ``kid`` the signing key; returns the key it replaces (now ``accepted``)."""
    rows = {r.kid: r for r in krepo.lock_signing_keys(conn)}
    target = rows.get(kid)
    if target is None or target.state == RETIRED:
        raise ConfigError(f"no core signing key {kid!r} that may sign (see `miniflow keys core list`)")
    if target.state == CURRENT:
        return None
    now = utcnow()
    old = next((r.kid for r in rows.values() if r.state == CURRENT), None)
    if old is not None:
        krepo.set_signing_state(conn, old, ACCEPTED, now)
    krepo.set_signing_state(conn, kid, CURRENT, now)
    return old


def retire_core_key(conn: Connection, kid: str) -> None:
    rows = {r.kid: r for r in krepo.lock_signing_keys(conn)}
    target = rows.get(kid)
    if target is None:
        raise ConfigError(f"no core signing key {kid!r}")
    if target.state == CURRENT:
        raise ConfigError(f"core key {kid} is the one signing: activate another first")
    krepo.set_signing_state(conn, kid, RETIRED, utcnow())


def create_client_key(conn: Connection, ring: KeyRing, name: str, role: str,
                      expires_at: datetime | None = None, scope: str | None = None) -> tuple[str, ApiKeyRow]:
    """A new client key; returns the token (shown once, never stored) and the stored row. ``scope``:
    workflow name patterns (``billing-*,reports``) the key is confined to in the HTTP API."""
    if role not in CLIENT_ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(CLIENT_ROLES)}")
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise ConfigError("a key name must be 1-100 printable characters")
    if krepo.api_key_by_name(conn, name) is not None:
        raise ConfigError(f"a key named {name!r} exists already (names are unique; revoke it or choose another)")
    if scope is not None:
        scope = normalise_scope(scope)
    token = new_token()
    kid = ClientKey.from_token(token).kid
    row = ApiKeyRow(kid=kid, name=name, role=role, token_hash=token_hash(token),
                    mac_key=ring.seal(b64(mac_key_of(token)), f"api key {kid}"), created_at=utcnow(),
                    expires_at=expires_at, scope=scope)
    krepo.insert_api_key(conn, row)
    return token, row


_PATTERN = re.compile(r"^[A-Za-z0-9_.*-]{1,128}$")


def normalise_scope(scope: str) -> str:
    """Comma-separated workflow name patterns (letters, digits, ``_ . -`` and ``*`` wildcards)."""
    patterns = [p.strip() for p in scope.split(",") if p.strip()]
    bad = [p for p in patterns if not _PATTERN.match(p)]
    if not patterns or bad:
        raise ConfigError(f"a key scope is a comma-separated list of workflow name patterns such as billing-*; "
                          f"{(bad[0] if bad else scope)[:40]!r} is not one")
    joined = ",".join(patterns)
    if len(joined) > 200:
        raise ConfigError("a key scope is at most 200 characters")
    return joined


def reseal_keys(conn: Connection, ring: KeyRing) -> int:
    """Seal every stored key secret again with the current data key; returns how many changed."""
    changed = 0
    current = f"{PREFIX}{ring.current}:"
    for row in krepo.lock_signing_keys(conn):
        if not row.private.startswith(current):
            name = f"signing key {row.kid}"
            krepo.set_sealed(conn, signing_kid=row.kid, value=ring.seal(ring.open(row.private, name), name))
            changed += 1
    for client in krepo.list_api_keys(conn):
        if not client.mac_key.startswith(current):
            name = f"api key {client.kid}"
            krepo.set_sealed(conn, api_kid=client.kid, value=ring.seal(ring.open(client.mac_key, name), name))
            changed += 1
    return changed
