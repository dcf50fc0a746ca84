"""`miniflow runs list|show|cancel|retry`."""

from __future__ import annotations

import sys

import click
from sqlalchemy.engine import Connection

from miniflow.persistence import RunRow
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import ConfigError, WaitTimedOut
from miniflow.protocol.publisher import Publisher
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL, RunStatus

from ..polling import poll_until
from ..settings import Settings
from ..views import fmt_ms, print_json, run_to_dict, runs_table, secret_params, steps_table
from .common import console, database_of, follow, settings_of

CONFIRM_TIMEOUT_S = 30.0  # how long cancel and retry wait for a coordinator to act


@click.group()
def runs() -> None:
    """Runs and their steps."""


@runs.command("list")
@click.option("--status", default=None)
@click.option("--workflow", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs_list(ctx: click.Context, status: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    with database_of(ctx).connect() as conn:
        rows = repo.list_runs(conn, limit=limit, status=status, workflow=workflow)
        items = [run_to_dict(r, secrets=secret_params(conn, r.workflow, r.version)) for r in rows] if as_json else []
    if as_json:
        print_json(console, items)
    else:
        console.print(runs_table(rows))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show a run (id or unique prefix) with its steps and attempts."""
    with database_of(ctx).connect() as conn:
        run = _find(conn, run_id)
        detail = run_to_dict(run, list(repo.get_steps(conn, run.id).values()), repo.get_attempts(conn, run.id),
                             secret_params(conn, run.workflow, run.version))
    jaeger = settings_of(ctx).jaeger_url
    if jaeger and detail["trace_id"]:
        detail["trace_url"] = f"{jaeger}/trace/{detail['trace_id']}"
    if as_json:
        print_json(console, detail)
        return
    console.print(f"run {detail['id']}  {detail['workflow']} v{detail['version']}  {detail['status']}  "
                  f"{fmt_ms(detail['duration_ms'])}", highlight=False)
    if detail["trace_id"]:
        link = f"  {detail['trace_url']}" if "trace_url" in detail else ""
        console.print(f"trace {detail['trace_id']}{link}", highlight=False)
    if detail["error"]:
        console.print(f"error: {detail['error']}", highlight=False)
    console.print(steps_table(detail))


def _find(conn: Connection, run_id: str) -> RunRow:
    run = repo.find_run(conn, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r} (give the full id or a unique prefix of 6+ characters)")
    return run


def _resolve(ctx: click.Context, run_id: str) -> tuple[Settings, RunRow]:
    settings = settings_of(ctx)
    settings.require_broker()
    with database_of(ctx).connect() as conn:
        return settings, _find(conn, run_id)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="", help="Recorded as the run's error.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the run shows as ended.")
@click.pass_context
def runs_cancel(ctx: click.Context, run_id: str, reason: str, wait: bool) -> None:
    """Cancel a run: no new steps are dispatched, late results are recorded but change nothing."""
    settings, run = _resolve(ctx, run_id)
    if run.status in RUN_TERMINAL:
        raise ConfigError(f"run {run.id} already ended ({run.status})")
    with Publisher(settings.require_broker(), settings.namespace) as publisher:
        publisher.cancel_run(run.id, reason)
    if not wait:
        console.print(f"cancel of run {run.id} published", highlight=False)
        return
    database = database_of(ctx)

    def ended() -> RunStatus | None:
        with database.connect() as conn:
            found = repo.get_run(conn, run.id)
        return found.status if found is not None and found.status in RUN_TERMINAL else None

    try:
        status = poll_until(ended, timeout=CONFIRM_TIMEOUT_S, what=f"run {run.id} to end")
    except WaitTimedOut:
        raise ConfigError(f"run {run.id} did not end within {CONFIRM_TIMEOUT_S:g}s: is a coordinator worker "
                          "running?") from None
    console.print(f"run {run.id} is {status}", highlight=False)
    if status != RunStatus.CANCELLED:
        sys.exit(1)


@runs.command("retry")
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Follow the run to its end.")
@click.option("--timeout", default=None, type=float)
@click.pass_context
def runs_retry(ctx: click.Context, run_id: str, wait: bool, timeout: float | None) -> None:
    """Re-run a failed or cancelled run from its unfinished steps, keeping succeeded outputs."""
    settings, run = _resolve(ctx, run_id)
    if run.status not in RETRYABLE:
        raise ConfigError(f"run {run.id} is {run.status}: only failed or cancelled runs can be retried")
    with Publisher(settings.require_broker(), settings.namespace) as publisher:
        message_id = publisher.retry_run(run.id)
    database = database_of(ctx)

    # The coordinator records the id of every retry it acts on, in the transaction that re-opens the
    # run: that is the proof, however fast the re-run ends again.
    def handled() -> bool:
        with database.connect() as conn:  # the run first: a retry handled in between is then seen
            found = repo.get_run(conn, run.id)
            if repo.request_handled(conn, message_id):
                return True
        if found is not None and found.status not in RETRYABLE:
            raise ConfigError(f"run {run.id} is {found.status}: it was retried by another request")
        return False

    try:
        poll_until(handled, timeout=CONFIRM_TIMEOUT_S, what=f"run {run.id} to be retried")
    except WaitTimedOut:
        raise ConfigError(f"run {run.id} was not retried within {CONFIRM_TIMEOUT_S:g}s: is a coordinator worker "
                          "running?") from None
    if not wait:
        console.print(f"run {run.id} retried", highlight=False)
        return
    sys.exit(follow(database, run.idempotency_key, "", timeout, False))
