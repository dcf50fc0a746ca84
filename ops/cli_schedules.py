"""`miniflow schedules ...` and `miniflow timer` (the cron timer, issue 4). See docs/scheduling.md."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from coordinator.schedule import next_fires, parse_cron
from coordinator.scheduling import Scheduler, ScheduleSpec, load_schedules_file, parse_schedule
from persistence import Database
from persistence import repository as repo
from persistence import schedule_repo as srepo
from protocol.errors import ConfigError
from protocol.names import QueueNames

from .settings import Settings
from .views import print_json, secret_params

console = Console()
err = Console(stderr=True)


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings.from_env()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def schedule_to_dict(row: dict[str, Any], count: int = 0, secrets: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A schedule as plain data; the values of secret params are masked."""
    from coordinator import mask_params

    out = {
        "id": row["id"], "name": row["name"], "workflow": row["workflow"], "version": row["version"],
        "cron": row["cron"], "timezone": row["timezone"], "params": mask_params(row["params"] or {}, secrets),
        "start": _iso(row["start_at"]), "end": _iso(row["end_at"]), "jitter": row["jitter_s"],
        "catch_up": {"policy": row["catch_up"], "limit": row["catch_up_limit"], "grace": row["catch_up_grace_s"]},
        "overlap": row["overlap"], "priority": row["priority"], "paused": row["paused"],
        "next_due_at": _iso(row["next_due_at"]),
    }
    if count:
        fires: list[datetime] = []
        if row["next_due_at"] is not None and not row["paused"]:
            cron = parse_cron(row["cron"], row["timezone"])
            fires = [row["next_due_at"], *next_fires(cron, row["next_due_at"], count - 1)]
            if row["end_at"] is not None:
                fires = [f for f in fires if f <= row["end_at"]]
        out["next_fires"] = [_iso(f) for f in fires]
    return out


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    from .cli import parse_params

    return parse_params(pairs)


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
            "name": name, "cron": cron, "timezone": timezone, "params": _parse_params(params), "version": version,
            "start": start, "end": end, "jitter": jitter, "overlap": overlap, "priority": priority, "paused": paused,
            "catch_up": {"policy": catch_up, "limit": catch_up_limit, "grace": grace},
        }, workflow, "command line")]
    database = Database(_settings(ctx).database_url)
    scheduler = Scheduler(QueueNames(_settings(ctx).namespace))
    now = _now()
    with database.transaction() as conn:
        added = [scheduler.add(conn, spec, now, replace=replace, source=from_file) for spec in specs]
        shown = [schedule_to_dict(row, secrets=secret_params(conn, row["workflow"], row["version"]))
                 for row, _ in added] if as_json else []
    database.dispose()
    if as_json:
        print_json(console, shown)
        return
    for row, created in added:
        console.print(f"schedule {row['name']}: {'added' if created else 'replaced'}, next tick "
                      f"{_iso(row['next_due_at'])}" + (" (paused)" if row["paused"] else ""), highlight=False)


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every schedule and its next tick."""
    database = Database(_settings(ctx).database_url)
    with database.connect() as conn:
        rows = srepo.list_schedules(conn)
        shown = [schedule_to_dict(r, secrets=secret_params(conn, r["workflow"], r["version"]))
                 for r in rows] if as_json else []
    database.dispose()
    if as_json:
        print_json(console, shown)
        return
    table = Table("name", "workflow", "cron", "timezone", "catch-up", "overlap", "next tick", "state")
    for r in rows:
        table.add_row(r["name"], r["workflow"], r["cron"], r["timezone"], r["catch_up"], r["overlap"],
                      (_iso(r["next_due_at"]) or "-")[:19], "paused" if r["paused"] else "active")
    console.print(table)


def _named(conn: Any, name: str) -> dict[str, Any]:
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
    database = Database(_settings(ctx).database_url)
    with database.connect() as conn:
        row = _named(conn, name)
        ledger = srepo.recent_ticks(conn, row["id"], ticks)
        runs = {t["idempotency_key"]: repo.run_id_for_key(conn, t["idempotency_key"])
                for t in ledger if t["idempotency_key"]}
        secrets = secret_params(conn, row["workflow"], row["version"])
    database.dispose()
    detail = schedule_to_dict(row, count, secrets)
    detail["ticks"] = [{
        "due_at": _iso(t["due_at"]), "kind": t["kind"], "outcome": t["outcome"],
        "idempotency_key": t["idempotency_key"], "run_id": runs.get(t["idempotency_key"] or ""),
        "fired_at": _iso(t["fired_at"]), "lateness_ms": t["lateness_ms"], "detail": t["detail"], "node": t["node"],
    } for t in ledger]
    if as_json:
        print_json(console, detail)
        return
    console.print(f"schedule {row['name']}: {row['workflow']}"
                  + (f" v{row['version']}" if row["version"] else "")
                  + f", cron {row['cron']!r} in {row['timezone']}, catch-up {row['catch_up']}, overlap "
                  f"{row['overlap']}" + (", PAUSED" if row["paused"] else ""), highlight=False)
    console.print("next fire times: " + (", ".join(f or "" for f in detail["next_fires"]) or "none"),
                  highlight=False)
    table = Table("due", "outcome", "run", "late", "detail", title="recent ticks", title_justify="left")
    for t in detail["ticks"]:
        table.add_row((t["due_at"] or "")[:23], t["outcome"], (t["run_id"] or "-")[:8],
                      f"{t['lateness_ms']:.0f} ms", t["detail"] or "")
    console.print(table)


def _update(ctx: click.Context, name: str, action: str) -> Any:
    database = Database(_settings(ctx).database_url)
    scheduler = Scheduler(QueueNames(_settings(ctx).namespace))
    with database.transaction() as conn:
        _named(conn, name)
        result = None
        if action == "delete":
            scheduler.delete(conn, name)
        else:
            result = getattr(scheduler, action)(conn, name, _now())
    database.dispose()
    return result


@schedules.command("pause")
@click.argument("name")
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Stop firing (ticks while paused are not recorded)."""
    _update(ctx, name, "pause")
    console.print(f"schedule {name}: paused", highlight=False)


@schedules.command("resume")
@click.argument("name")
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Fire again from the next tick after now."""
    due = _update(ctx, name, "resume")
    console.print(f"schedule {name}: resumed, next tick {_iso(due) or 'none (window ended)'}", highlight=False)


@schedules.command("delete")
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Delete a schedule and its ledger (runs it started stay)."""
    _update(ctx, name, "delete")
    console.print(f"schedule {name}: deleted", highlight=False)


@schedules.command("trigger")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def trigger(ctx: click.Context, name: str, as_json: bool) -> None:
    """Fire once now (a ledger row of kind 'manual'); needs MINIFLOW_BROKER_URL."""
    from actors import make_broker
    from actors.relay import Relay

    settings = _settings(ctx)
    url = settings.require_broker()
    names = QueueNames(settings.namespace)
    database = Database(settings.database_url)
    with database.transaction() as conn:
        _named(conn, name)
        key, outgoing = Scheduler(names, node="cli").trigger(conn, name, _now())
    broker = make_broker(url, names)
    try:
        relay = Relay(broker, database)
        relay.publish(outgoing)
        relay.delete_published()  # no background deleter in this one-shot command
    finally:
        broker.close()
        database.dispose()
    if as_json:
        print_json(console, {"schedule": name, "idempotency_key": key})
    else:
        console.print(f"schedule {name}: triggered, idempotency key {key}", highlight=False)


@click.command("timer")
@click.option("--max-sleep", default=1.0, show_default=True, type=float,
              help="Longest wait between passes (new and paused schedules are seen this fast).")
@click.pass_context
def timer(ctx: click.Context, max_sleep: float) -> None:
    """Run a cron timer until SIGINT/SIGTERM (run as many as you like: each tick fires once)."""
    from actors import declare_topology, make_broker
    from actors.relay import Relay
    from actors.timer import Timer, limit_idle_transactions

    settings = _settings(ctx)
    url = settings.require_broker()
    if settings.database_url.startswith("sqlite"):
        raise ConfigError("timers need Postgres (MINIFLOW_DATABASE_URL=postgresql://...): several timers "
                          "fence each tick with row locks that SQLite does not have across processes")
    names = QueueNames(settings.namespace)
    database = Database(settings.database_url, pool_size=4)
    limit_idle_transactions(database)
    broker = make_broker(url, names)
    declare_topology(broker, names)
    relay = Relay(broker, database)
    loop = Timer(database, broker, names, relay=relay, max_sleep_s=max_sleep)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    relay.start()
    click.echo(f"miniflow timer ready: node={loop.node} {settings.describe()}", err=True)
    try:
        loop.run(stop)
    finally:
        relay.stop()
        broker.close()
        database.dispose()
    sys.exit(0)


TIMER_COMMANDS: list[click.Command] = [timer]
