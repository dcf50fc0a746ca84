"""`miniflow schedules add|list|show|pause|resume|trigger|delete` (see docs/scheduling.md)."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table
from sqlalchemy.engine import Connection

from miniflow.actors import make_broker
from miniflow.actors.relay import Relay
from miniflow.coordinator import Scheduler, ScheduleSpec, load_schedules_file, parse_schedule
from miniflow.persistence import ScheduleRow
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import schedules as srepo
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.names import QueueNames

from ..signing import core_keys
from ..terminal import safe_text
from ..views import iso, print_json, schedule_to_dict, secret_params
from .common import console, database_of, parse_params, say, settings_of


@click.group()
def schedules() -> None:
    """Cron schedules of workflows."""


@schedules.command("add")
@click.argument("name", required=False)
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None,
              help="Add the `schedules:` of a workflow FILE (the workflow must be deployed).")
@click.option("--workflow", default=None, help="Workflow the schedule starts.")
@click.option("--cron", "cron", default=None, help="Cron expression: 5 fields, 6 with seconds first, or @daily...")
@click.option("--timezone", "--tz", "timezone", default="UTC", show_default=True, help="IANA timezone.")
@click.option("-p", "--param", "params", multiple=True, help="Run parameter key=value (repeatable).")
@click.option("--version", "version", type=int, default=None, help="Pin a workflow version (default: latest).")
@click.option("--start", default=None, help="Window start (ISO 8601).")
@click.option("--end", default=None, help="Window end (ISO 8601).")
@click.option("--jitter", default=0.0, type=float, show_default=True, help="Random delay up to this many seconds.")
@click.option("--catch-up", "catch_up", default="skip", show_default=True,
              type=click.Choice(["skip", "latest", "all"]))
@click.option("--catch-up-limit", default=1, show_default=True, type=int, help="With --catch-up all.")
@click.option("--grace", default=60.0, show_default=True, type=float,
              help="Seconds a tick may be late and still count as on time.")
@click.option("--overlap", default="allow", show_default=True,
              type=click.Choice(["allow", "skip", "buffer_one", "cancel_running"]))
@click.option("--priority", default=0, show_default=True, type=int)
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--replace", is_flag=True, help="Replace a schedule of the same name.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def add(ctx: click.Context, name: str | None, from_file: str | None, workflow: str | None, cron: str | None,
        timezone: str, params: tuple[str, ...], version: int | None, start: str | None, end: str | None,
        jitter: float, catch_up: str, catch_up_limit: int, grace: float, overlap: str, priority: int,
        paused: bool, replace: bool, as_json: bool) -> None:
    """Add schedule NAME (or every schedule of --from FILE)."""
    specs: list[ScheduleSpec]
    if from_file:
        if name or workflow or cron:
            raise ConfigError("give either --from FILE or NAME --workflow --cron, not both")
        specs = load_schedules_file(from_file)
        if not specs:
            raise ConfigError(f"{from_file} has no `schedules:` list")
    else:
        if not (name and workflow and cron):
            raise ConfigError("schedules add needs NAME, --workflow and --cron (or --from FILE)")
        specs = [parse_schedule({
            "name": name, "cron": cron, "timezone": timezone, "params": parse_params(params), "version": version,
            "start": start, "end": end, "jitter": jitter, "overlap": overlap, "priority": priority, "paused": paused,
            "catch_up": {"policy": catch_up, "limit": catch_up_limit, "grace": grace},
        }, workflow, "command line")]
    database = database_of(ctx)
    scheduler = Scheduler(QueueNames(settings_of(ctx).namespace), keys=settings_of(ctx).data_keys)
    now = utcnow()
    with database.transaction() as conn:
        added = [scheduler.add(conn, spec, now, replace=replace, source=from_file) for spec in specs]
        shown = [schedule_to_dict(row, secrets=secret_params(conn, row.workflow, row.version))
                 for row, _ in added] if as_json else []
    database.dispose()
    if as_json:
        print_json(console, shown)
        return
    for row, created in added:
        console.print(f"schedule {row.name}: {'added' if created else 'replaced'}, next tick "
                      f"{iso(row.next_due_at)}" + (" (paused)" if row.paused else ""), highlight=False)


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every schedule and its next tick."""
    database = database_of(ctx)
    with database.connect() as conn:
        rows = srepo.list_schedules(conn)
        shown = [schedule_to_dict(r, secrets=secret_params(conn, r.workflow, r.version)) for r in rows] \
            if as_json else []
    database.dispose()
    if as_json:
        print_json(console, shown)
        return
    table = Table("name", "workflow", "cron", "timezone", "catch-up", "overlap", "next tick", "state")
    for r in rows:
        table.add_row(*(safe_text(v) for v in (r.name, r.workflow, r.cron, r.timezone, r.catch_up, r.overlap,
                                          (iso(r.next_due_at) or "-")[:19], "paused" if r.paused else "active")))
    console.print(table)


def _named(conn: Connection, name: str) -> ScheduleRow:
    row = srepo.get_schedule(conn, name)
    if row is None:
        raise ConfigError(f"schedule {name!r} does not exist (see `miniflow schedules list`)")
    return row


@schedules.command("show")
@click.argument("name")
@click.option("--next", "count", default=5, show_default=True, help="How many next fire times.")
@click.option("--ticks", default=20, show_default=True, help="How many recent ledger rows.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, name: str, count: int, ticks: int, as_json: bool) -> None:
    """A schedule, its next fire times and its recent tick ledger."""
    database = database_of(ctx)
    with database.connect() as conn:
        row = _named(conn, name)
        ledger = srepo.recent_ticks(conn, row.id, ticks)
        runs = {t.idempotency_key: repo.run_id_for_key(conn, t.idempotency_key) for t in ledger if t.idempotency_key}
        secrets = secret_params(conn, row.workflow, row.version)
    database.dispose()
    detail = schedule_to_dict(row, count, secrets)
    detail["ticks"] = [{
        "due_at": iso(t.due_at), "kind": t.kind, "outcome": t.outcome, "idempotency_key": t.idempotency_key,
        "run_id": runs.get(t.idempotency_key or ""), "fired_at": iso(t.fired_at), "lateness_ms": t.lateness_ms,
        "detail": t.detail, "node": t.node,
    } for t in ledger]
    if as_json:
        print_json(console, detail)
        return
    console.print(f"schedule {row.name}: {row.workflow}" + (f" v{row.version}" if row.version else "")
                  + f", cron {row.cron!r} in {row.timezone}, catch-up {row.catch_up}, overlap {row.overlap}"
                  + (", PAUSED" if row.paused else ""), highlight=False)
    console.print("next fire times: " + (", ".join(f or "" for f in detail["next_fires"]) or "none"),
                  highlight=False)
    table = Table("due", "outcome", "run", "late", "detail", title="recent ticks", title_justify="left")
    for t in detail["ticks"]:
        table.add_row(*(safe_text(v) for v in ((t["due_at"] or "")[:23], t["outcome"], (t["run_id"] or "-")[:8],
                                          f"{t['lateness_ms']:.0f} ms", t["detail"] or "")))
    console.print(table)


def _change(ctx: click.Context, name: str, action: str) -> datetime | None:
    database = database_of(ctx)
    scheduler = Scheduler(QueueNames(settings_of(ctx).namespace))
    result = None
    with database.transaction() as conn:
        _named(conn, name)
        if action == "delete":
            scheduler.delete(conn, name)
        elif action == "pause":
            scheduler.pause(conn, name, utcnow())
        else:
            result = scheduler.resume(conn, name, utcnow())
    database.dispose()
    return result


@schedules.command("pause")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pause(ctx: click.Context, name: str, as_json: bool) -> None:
    """Stop firing (ticks while paused are not recorded)."""
    _change(ctx, name, "pause")
    say(as_json, {"schedule": name, "state": "paused"}, f"schedule {name}: paused")


@schedules.command("resume")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def resume(ctx: click.Context, name: str, as_json: bool) -> None:
    """Fire again from the next tick after now."""
    due = _change(ctx, name, "resume")
    say(as_json, {"schedule": name, "state": "active", "next_due_at": iso(due)},
          f"schedule {name}: resumed, next tick {iso(due) or 'none (window ended)'}")


@schedules.command("delete")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def delete(ctx: click.Context, name: str, as_json: bool) -> None:
    """Delete a schedule and its ledger (runs it started stay)."""
    _change(ctx, name, "delete")
    say(as_json, {"schedule": name, "state": "deleted"}, f"schedule {name}: deleted")



@schedules.command("trigger")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def trigger(ctx: click.Context, name: str, as_json: bool) -> None:
    """Fire once now (a ledger row of kind 'manual'); needs MINIFLOW_BROKER_URL."""
    settings = settings_of(ctx)
    url = settings.require_broker()
    names = QueueNames(settings.namespace)
    database = database_of(ctx)
    with database.transaction() as conn:
        _named(conn, name)
        key, outgoing = Scheduler(names, node="cli", keys=settings.data_keys).trigger(conn, name, utcnow())
    broker = make_broker(url, names, keys=core_keys(settings, database))  # signed as the timer would
    try:
        relay = Relay(broker, database, namespace=names.namespace)
        relay.publish(outgoing)
        relay.delete_published()  # no background deleter in this one-shot command
    finally:
        broker.close()
        database.dispose()
    if as_json:
        print_json(console, {"schedule": name, "idempotency_key": key})
    else:
        console.print(f"schedule {name}: triggered, idempotency key {key}", highlight=False)
