"""`miniflow keys ...`: the data keys that seal secrets at rest, the core's signing keys, and client keys.

    keys new-data-key | rotate-data-key            data keys (MINIFLOW_DATA_KEY / _FILE)
    keys core init | add | activate | retire | list | public    the core's Ed25519 signing keys
    keys create | list | revoke                    client keys (producers, operators, executors, ...)
"""

from __future__ import annotations

import re
from datetime import timedelta

import click
from rich.table import Table

from miniflow.persistence import repository as repo
from miniflow.persistence.keys import (
    CURRENT,
    NEXT,
    RETIRED,
    activate_core_key,
    add_core_key,
    create_client_key,
    reseal_keys,
    retire_core_key,
)
from miniflow.persistence.repository import keys as krepo
from miniflow.persistence.repository import schedules as srepo
from miniflow.persistence.sealing import KeyRing, new_key_line, reseal
from miniflow.protocol.auth import CLIENT_ROLES
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError

from ..terminal import safe_text
from ..views import iso, print_json
from .common import console, database_of, say, settings_of

PAGE = 500


@click.group()
def keys() -> None:
    """Data keys, the core's signing keys, and client keys (see docs/security.md)."""


@keys.command("new-data-key")
@click.option("--id", "key_id", default=None, help="The key id (default: derived from the key).")
@click.option("--json", "as_json", is_flag=True)
def new_data_key(key_id: str | None, as_json: bool) -> None:
    """Print a new data key line `id:key`. To rotate: put it first in the key file (keep the old
    lines), restart the coordinators and timers, run `rotate-data-key`, then drop the old lines."""
    line = new_key_line(key_id)
    say(as_json, {"id": line.split(":", 1)[0], "line": line}, line)


@keys.command("rotate-data-key")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rotate_data_key(ctx: click.Context, as_json: bool) -> None:
    """Seal every stored secret param again with the current (first) data key."""
    ring = settings_of(ctx).data_keys
    if ring is None:
        raise ConfigError("no data key is configured: set MINIFLOW_DATA_KEY_FILE (the new key first)")
    database = database_of(ctx)
    runs = schedules = 0
    after = ""
    while True:
        with database.transaction() as conn:
            page = repo.runs_after(conn, after, PAGE)
            for run in page:
                fresh = reseal(run.params or {}, ring)
                if fresh is not None:
                    repo.update_run(conn, run.id, params=fresh)
                    runs += 1
        if len(page) < PAGE:
            break
        after = page[-1].id
    with database.transaction() as conn:
        for schedule in srepo.list_schedules(conn):
            fresh = reseal(schedule.params or {}, ring)
            if fresh is not None:
                srepo.update_schedule(conn, schedule.id, params=fresh)
                schedules += 1
        sealed_keys = reseal_keys(conn, ring)
    say(as_json, {"key": ring.current, "runs": runs, "schedules": schedules, "keys": sealed_keys},
        f"sealed again with data key {ring.current}: {runs} run(s), {schedules} schedule(s), {sealed_keys} key(s)")


# -- the core's signing keys ------------------------------------------------------------------------
@keys.group("core")
def core() -> None:
    """The core's Ed25519 signing keys (kept in the database, sealed with the data key)."""


def _ring(ctx: click.Context) -> KeyRing:
    ring = settings_of(ctx).data_keys
    if ring is None:
        raise ConfigError("keys are stored sealed with the data key: set MINIFLOW_DATA_KEY or MINIFLOW_DATA_KEY_FILE "
                          "(`miniflow keys new-data-key` makes one)")
    return ring


def _public_line(ctx: click.Context) -> str:
    with database_of(ctx).connect() as conn:
        rows = krepo.signing_keys_all(conn)
    return ",".join(f"{r.kid}:{r.public}" for r in rows if r.state != RETIRED)


@core.command("init")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def core_init(ctx: click.Context, as_json: bool) -> None:
    """Create the first core signing key (once per deployment)."""
    ring = _ring(ctx)
    with database_of(ctx).transaction() as conn:
        key = add_core_key(conn, ring, first=True)
    line = _public_line(ctx)
    say(as_json, {"kid": key.kid, "state": CURRENT, "core_public_keys": line},
        f"core signing key {key.kid} created and signing.\nexecutors check with: MINIFLOW_CORE_PUBLIC_KEYS={line}")


@core.command("add")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def core_add(ctx: click.Context, as_json: bool) -> None:
    """Add a core key that verifies but does not sign yet (the first step of a rotation)."""
    ring = _ring(ctx)
    with database_of(ctx).transaction() as conn:
        key = add_core_key(conn, ring)
    line = _public_line(ctx)
    say(as_json, {"kid": key.kid, "state": NEXT, "core_public_keys": line},
        f"core key {key.kid} added (state next). Give every executor MINIFLOW_CORE_PUBLIC_KEYS={line}, restart "
        f"them, then run `miniflow keys core activate {key.kid}`.")


@core.command("activate")
@click.argument("kid")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def core_activate(ctx: click.Context, kid: str, as_json: bool) -> None:
    """Make a core key the one that signs (within 10 s on every core process)."""
    with database_of(ctx).transaction() as conn:
        old = activate_core_key(conn, kid)
    say(as_json, {"kid": kid, "state": CURRENT, "replaced": old},
        f"core key {kid} signs from now on" + (f"; {old} is still accepted until you retire it" if old else ""))


@core.command("retire")
@click.argument("kid")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def core_retire(ctx: click.Context, kid: str, as_json: bool) -> None:
    """Stop accepting a core key (after what it signed has drained: delayed retries wait up to a day)."""
    with database_of(ctx).transaction() as conn:
        retire_core_key(conn, kid)
    say(as_json, {"kid": kid, "state": RETIRED}, f"core key {kid} retired: messages it signed are now refused")


@core.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def core_list(ctx: click.Context, as_json: bool) -> None:
    with database_of(ctx).connect() as conn:
        rows = krepo.signing_keys_all(conn)
    data = [{"kid": r.kid, "state": r.state, "public": r.public, "created_at": iso(r.created_at),
             "changed_at": iso(r.changed_at)} for r in rows]
    if as_json:
        print_json(console, data)
        return
    table = Table("kid", "state", "created", "changed", "public key")
    for r in rows:
        table.add_row(r.kid, r.state, str(iso(r.created_at)), str(iso(r.changed_at)), r.public)
    console.print(table)


@core.command("public")
@click.pass_context
def core_public(ctx: click.Context) -> None:
    """Print the value of MINIFLOW_CORE_PUBLIC_KEYS for executors (every key not retired)."""
    line = _public_line(ctx)
    if not line:
        raise ConfigError("there is no core signing key yet: run `miniflow keys core init`")
    console.print(line, highlight=False, soft_wrap=True)


# -- client keys ----------------------------------------------------------------------------------
@keys.command("create")
@click.option("--name", required=True, help="A unique name for the key (who or what holds it).")
@click.option("--role", required=True, type=click.Choice(CLIENT_ROLES))
@click.option("--expires", default=None, help="Lifetime, e.g. 90d, 12h (default: no expiry).")
@click.option("--scope", default=None,
              help="Workflow name patterns the key may act on in the HTTP API, e.g. 'billing-*' (default: all).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def create(ctx: click.Context, name: str, role: str, expires: str | None, scope: str | None, as_json: bool) -> None:
    """Create a client key and print its token once (it is not stored: keep it as MINIFLOW_KEY)."""
    ring = _ring(ctx)
    until = utcnow() + parse_lifetime(expires) if expires else None
    with database_of(ctx).transaction() as conn:
        token, row = create_client_key(conn, ring, name, role, until, scope)
    say(as_json, {"kid": row.kid, "name": name, "role": role, "expires_at": iso(until) if until else None,
                  "scope": row.scope, "token": token},
        f"key {row.kid} ({name}, {role}) created. Its token, shown this once:\n{token}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_keys(ctx: click.Context, as_json: bool) -> None:
    """Client keys: id, name, role, created, last used, expiry, revoked (never the token)."""
    with database_of(ctx).connect() as conn:
        rows = krepo.list_api_keys(conn)
    data = [{"kid": r.kid, "name": r.name, "role": r.role, "scope": r.scope, "created_at": iso(r.created_at),
             "last_used_at": iso(r.last_used_at), "expires_at": iso(r.expires_at),
             "revoked_at": iso(r.revoked_at)} for r in rows]
    if as_json:
        print_json(console, data)
        return
    table = Table("kid", "name", "role", "scope", "created", "last used", "expires", "revoked")
    for item in data:
        table.add_row(*(safe_text(str(item[k] or "-")) for k in ("kid", "name", "role", "scope", "created_at",
                                                             "last_used_at", "expires_at", "revoked_at")))
    console.print(table)


@keys.command("revoke")
@click.argument("kid")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def revoke(ctx: click.Context, kid: str, as_json: bool) -> None:
    """Revoke a client key: what it signs is refused within 10 s everywhere."""
    with database_of(ctx).transaction() as conn:
        if not krepo.revoke_api_key(conn, kid, utcnow()):
            raise ConfigError(f"no key {kid!r} that is not revoked already (see `miniflow keys list`)")
    say(as_json, {"kid": kid, "revoked": True}, f"key {kid} revoked")


def parse_lifetime(text: str) -> timedelta:
    match = re.fullmatch(r"(\d{1,5})([dhm])", text.strip())
    if match is None:
        raise ConfigError(f"--expires {text[:20]!r} must be a number and d, h or m (e.g. 90d)")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})
