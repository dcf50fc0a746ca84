"""The monitors on the command line: `miniflow workers`, `queues`, `why`, `stats` and the live
`monitor`. Each prints a view of ops/monitor (the HTTP API serves the same views); every text that
came from a message or a step is escaped for the terminal."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from miniflow.coordinator import Catalog
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.names import QueueNames

from ..monitor.queues import QueueReport
from ..monitor.results import result_summary
from ..monitor.snapshot import Snapshot, queue_view, take
from ..monitor.why import explain
from ..monitor.workers import WorkerView, count_by_state, list_workers
from ..terminal import safe_text
from ..views import fmt_ms, print_json
from .common import console, database_of, settings_of

STATE_STYLE = {"alive": "green", "late": "yellow", "gone": "red", "stopped": "dim"}
_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_window(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``7d`` -> a timedelta (at most 366 days)."""
    found = _WINDOW.fullmatch(text.strip())
    if not found:
        raise ConfigError(f"window {text[:20]!r} must be a number and a unit: 90s, 15m, 1h, 7d")
    value = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
    if not 0 < value <= 366 * 86400:
        raise ConfigError(f"window {text[:20]!r} must be more than 0 and at most 366 days")
    return timedelta(seconds=value)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def workers_table(views: list[WorkerView]) -> Table:
    table = Table(title="workers", title_justify="left")
    for col in ("node", "kind", "state", "roles", "queues", "threads", "busy", "running", "heard", "version"):
        table.add_column(col)
    for v in views:
        running = ", ".join(f"{r['run_id'][:8]}/{r['step']}#{r['attempt']}" for r in v.running[:3])
        more = f" +{len(v.running) - 3}" if len(v.running) > 3 else ""
        table.add_row(safe_text(v.node), v.kind, Text(v.state, style=STATE_STYLE.get(v.state, "")),
                      safe_text(",".join(v.roles)), safe_text(", ".join(v.queues)), str(v.threads), str(v.busy),
                      safe_text(running + more), _ago(v.silent_s) + " ago", safe_text(v.version))
    return table


def queues_table(report: QueueReport, waiting: dict[str, int] | None = None) -> Table:
    table = Table(title=f"queues ({report.source})", title_justify="left")
    for col in ("queue", "role", "ready", "unacked", "consumers", "in/s", "out/s", "oldest", "steps waiting"):
        table.add_column(col)
    for q in report.queues:
        if not q.exists and q.role in ("delay", "dead"):
            continue
        warn = q.exists and q.role == "steps" and q.consumers == 0 and (q.ready or 0) > 0
        consumers = Text(str(q.consumers) if q.consumers is not None else "-", style="bold red" if warn else "")
        table.add_row(safe_text(q.name), q.role, "-" if q.ready is None else str(q.ready),
                      "-" if q.unacked is None else str(q.unacked), consumers,
                      "-" if q.publish_per_s is None else f"{q.publish_per_s:g}",
                      "-" if q.deliver_per_s is None else f"{q.deliver_per_s:g}", _ago(q.oldest_age_s),
                      str((waiting or {}).get(q.name, "")) if q.role == "steps" else "")
    return table


@click.command("workers")
@click.option("--all", "everything", is_flag=True, help="Every registered process, also those gone or stopped "
              "more than an hour ago.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """The workers registry: every worker and timer process, alive, late, gone or stopped, and what it runs."""
    settings = settings_of(ctx)
    views = list_workers(database_of(ctx), settings.namespace, everything=everything)
    if as_json:
        print_json(console, {"workers": [v.to_dict() for v in views], "by_state": count_by_state(views)})
        return
    if not views:
        console.print("no workers have sent a heartbeat in this namespace yet", highlight=False)
        return
    console.print(workers_table(views))


@click.command("queues")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """The queue monitor: depth, ready vs unacknowledged, consumers and rates of every MiniFlow queue."""
    settings = settings_of(ctx)
    report = queue_view(database_of(ctx), Catalog(), QueueNames(settings.namespace), settings.require_broker(),
                        management=settings.rabbitmq_api_url)
    if as_json:
        print_json(console, report.to_dict())
        return
    console.print(queues_table(report))
    if report.source == "passive":
        console.print(f"unacknowledged messages and rates come from the management API, {report.management}",
                      style="dim", highlight=False)


@click.command("why")
@click.argument("run_id")
@click.argument("step")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def why(ctx: click.Context, run_id: str, step: str, as_json: bool) -> None:
    """Why isn't STEP of RUN_ID running? Its queue, how long it has waited, what is ahead of it, who
    consumes that queue, and the likely causes, most likely first."""
    settings = settings_of(ctx)
    answer = explain(database_of(ctx), Catalog(), QueueNames(settings.namespace), run_id, step,
                     broker_url=settings.broker_url)
    if as_json:
        print_json(console, answer.to_dict())
        return
    console.print(Text.assemble(("step ", "bold"), safe_text(f"{answer.step} of run {answer.run_id}"),
                                f": {answer.status} (attempt {answer.attempt})"))
    if answer.queue and answer.status == "queued":
        facts = [f"queue {answer.queue}", f"waiting {_ago(answer.waiting_s)}"]
        if answer.ready_in_queue is not None:
            facts.append(f"{answer.ready_in_queue} ready there, {answer.consumers} consumer(s)")
        facts.append(f"executors consuming it: {', '.join(answer.executors) or 'none heard of'}")
        console.print(safe_text("  " + "; ".join(facts)))
    for reason in answer.reasons:
        console.print(Text.assemble("  - ", safe_text(reason)))


@click.command("stats")
@click.option("--since", "window", default="1h", show_default=True, help="The window: 90s, 15m, 1h, 1d, 7d.")
@click.option("--workflow", default=None, help="One workflow only.")
@click.option("--top-errors", default=5, show_default=True, type=click.IntRange(0, 100))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, window: str, workflow: str | None, top_errors: int, as_json: bool) -> None:
    """The result monitor: runs by status, success rate, durations, queue wait, attempts and errors,
    per workflow and per step, over a window."""
    since = utcnow() - parse_window(window)
    summary = result_summary(database_of(ctx), since=since, workflow=workflow, top_errors=top_errors)
    if as_json:
        print_json(console, summary.to_dict())
        return
    table = Table(title=f"results since {since.isoformat(timespec='seconds')}", title_justify="left")
    for col in ("workflow / step", "runs", "succeeded", "failed", "success", "p50", "p95", "p99", "queue p95",
                "attempts", "top error"):
        table.add_column(col)
    for w in summary.workflows:
        error = w.top_errors[0] if w.top_errors else None
        table.add_row(safe_text(w.workflow, "bold"), str(w.runs), str(w.by_status.get("succeeded", 0)),
                      str(w.by_status.get("failed", 0)), _rate(w.success_rate), fmt_ms(w.duration_ms.p50),
                      fmt_ms(w.duration_ms.p95), fmt_ms(w.duration_ms.p99), "", "",
                      safe_text(f"{error.error_type} x{error.count}" if error else ""))
        for s in w.steps:
            error = s.top_errors[0] if s.top_errors else None
            table.add_row(safe_text("  " + s.step), "", str(s.by_status.get("succeeded", 0)),
                          str(s.by_status.get("failed", 0)), _rate(s.success_rate), fmt_ms(s.duration_ms.p50),
                          fmt_ms(s.duration_ms.p95), fmt_ms(s.duration_ms.p99), fmt_ms(s.queue_wait_ms.p95),
                          f"{s.attempts_mean:.2f} (max {s.attempts_max})" if s.attempts_mean is not None else "",
                          safe_text(f"{error.error_type} x{error.count}" if error else ""))
    console.print(table)
    if summary.dead_letters:
        console.print(safe_text("dead letters: " + ", ".join(f"{k} x{v}" for k, v in summary.dead_letters.items())))


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def snapshot_view(snap: Snapshot) -> Group:
    parts: list[Any] = []
    counts = count_by_state(snap.workers)
    parts.append(Text.assemble(("miniflow monitor", "bold"), f"  {snap.at.isoformat(timespec='seconds')}  "
                               f"namespace {snap.namespace}  runs in flight {snap.active_runs}  "
                               f"oldest {_ago(snap.oldest_active_run_s)}  outbox {snap.outbox_backlog}  workers "
                               + " ".join(f"{k} {v}" for k, v in counts.items() if v)))
    parts.append(workers_table(snap.workers) if snap.workers else Text("no workers heard of", style="yellow"))
    if snap.queues is not None:
        parts.append(queues_table(snap.queues, snap.waiting))
    else:
        parts.append(safe_text(f"queues: {snap.queues_error}", "yellow"))
    recent = Table(title="recent runs", title_justify="left")
    for col in ("run", "workflow", "status", "duration", "error"):
        recent.add_column(col)
    for r in snap.recent_runs[:10]:
        recent.add_row(safe_text(str(r["id"])[:8]), safe_text(str(r["workflow"])), safe_text(str(r["status"])),
                       fmt_ms(r["duration_ms"]), safe_text(str(r["error"] or "")[:60]))
    parts.append(recent)
    slow = Table(title="slowest steps (15 min)", title_justify="left")
    for col in ("run", "step", "attempt", "duration", "node"):
        slow.add_column(col)
    for s in snap.slowest[:5]:
        slow.add_row(safe_text(str(s["run_id"])[:8]), safe_text(str(s["step"])), str(s["attempt"]),
                     fmt_ms(s["duration_ms"]), safe_text(str(s["node"] or "")))
    parts.append(slow)
    if snap.dead_letters:
        parts.append(safe_text("dead letters (15 min): " + ", ".join(
            f"{d['code']} on {d['queue']}" for d in snap.dead_letters[:5]), "red"))
    return Group(*parts)


@click.command("monitor")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Print one snapshot as JSON and exit.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.pass_context
def monitor(ctx: click.Context, interval: float, as_json: bool, once: bool) -> None:
    """A live view of workers, queues, runs in flight and recent outcomes, the slowest steps and dead
    letters arriving; refreshes in place until Ctrl-C."""
    settings = settings_of(ctx)
    database = database_of(ctx)
    catalog = Catalog()
    names = QueueNames(settings.namespace)

    def snap() -> Snapshot:
        return take(database, catalog, names, settings.broker_url, management=settings.rabbitmq_api_url)

    if as_json:
        print_json(console, snap().to_dict())
        return
    if once or not console.is_terminal:
        console.print(snapshot_view(snap()))
        return
    with Live(snapshot_view(snap()), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(snapshot_view(snap()))
        except KeyboardInterrupt:
            return
