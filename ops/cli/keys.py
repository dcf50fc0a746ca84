"""`miniflow keys new-data-key|rotate-data-key`: the data keys that seal secret params at rest."""

from __future__ import annotations

import click

from miniflow.persistence import repository as repo
from miniflow.persistence.repository import schedules as srepo
from miniflow.persistence.sealing import new_key_line, reseal
from miniflow.protocol.errors import ConfigError

from .common import database_of, say, settings_of

PAGE = 500


@click.group()
def keys() -> None:
    """Data keys (MINIFLOW_DATA_KEY / MINIFLOW_DATA_KEY_FILE)."""


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
    say(as_json, {"key": ring.current, "runs": runs, "schedules": schedules},
        f"sealed again with data key {ring.current}: {runs} run(s), {schedules} schedule(s)")
