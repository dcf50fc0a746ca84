"""`miniflow pools list|set`: the slots of step pools (coordinator/pools.py)."""

from __future__ import annotations

import click
from rich.table import Table

from miniflow.coordinator.definitions import POOL_RE
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError

from ..terminal import safe_text
from ..views import print_json
from .common import console, database_of

MAX_SLOTS = 100_000


@click.group("pools")
def pools() -> None:
    """Step pools with a limit: at most N of a pool's steps dispatched at once, across all runs."""


@pools.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pools_list(ctx: click.Context, as_json: bool) -> None:
    """The pools with a limit or with steps holding or waiting for a slot."""
    with database_of(ctx).connect() as conn:
        rows = repo.list_pools(conn)
    items = [{"pool": pool, "slots": slots, "in_use": used, "waiting": waiting} for pool, slots, used, waiting in rows]
    if as_json:
        print_json(console, items)
        return
    table = Table("pool", "slots", "in use", "waiting")
    for i in items:
        slots = "no limit" if i["slots"] is None else str(i["slots"])
        table.add_row(safe_text(str(i["pool"])), slots, str(i["in_use"]), str(i["waiting"]))
    console.print(table)


@pools.command("set")
@click.argument("pool")
@click.option("--slots", type=int, default=None, help="At most this many of its steps out at once.")
@click.option("--unlimited", is_flag=True, help="Take the pool's limit away.")
@click.pass_context
def pools_set(ctx: click.Context, pool: str, slots: int | None, unlimited: bool) -> None:
    """Set POOL's limit. Steps waiting for a slot are dispatched by the coordinator's next pass
    (within 10 s) when the limit rises or goes; a lower limit lets the steps out finish and admits
    no more until they are under it."""
    if not POOL_RE.fullmatch(pool):
        raise ConfigError("a pool is 1-64 characters of letters, digits, '_', '-'")
    if unlimited == (slots is not None):
        raise ConfigError("give --slots N or --unlimited")
    if slots is not None and not 1 <= slots <= MAX_SLOTS:
        raise ConfigError(f"--slots must be from 1 to {MAX_SLOTS}")
    with database_of(ctx).transaction() as conn:
        repo.set_pool_slots(conn, pool, slots, utcnow())
    console.print(f"pool {pool}: " + ("no limit" if slots is None else f"at most {slots} step(s) at once"),
                  highlight=False, markup=False)
