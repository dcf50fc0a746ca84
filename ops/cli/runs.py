"""`miniflow runs list|show|cancel|retry`."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy.engine import Connection

from miniflow.coordinator import Catalog
from miniflow.persistence import RunRow
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import ConfigError, WaitTimedOut
from miniflow.protocol.names import CANCEL_RUN, RETRY_RUN
from miniflow.protocol.publisher import Publisher
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL, RunStatus

from ..polling import poll_until
from ..settings import Settings
from ..views import fmt_ms, print_json, run_to_dict, runs_table, secret_params, steps_table
from .common import console, database_of, follow, say, settings_of, signing_key

CONFIRM_TIMEOUT_S = 30.0  # how long cancel and retry wait for a coordinator to act
TRACEBACK_LINES = 12  # of a failed attempt's traceback, in the text of `runs show` (--json has it all)
_catalog = Catalog()


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
@click.argument("run_id", required=False)
@click.option("--key", default=None, help="Find the run by the idempotency key its start carried.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs_show(ctx: click.Context, run_id: str | None, key: str | None, as_json: bool) -> None:
    """Show a run (id, unique prefix, or --key) with its steps in DAG order, its failed attempts and
    their tracebacks."""
    if (run_id is None) == (key is None):
        raise ConfigError("give a run id (or a unique prefix of 6+ characters) or --key KEY")
    with database_of(ctx).connect() as conn:
        run = _find(conn, run_id) if run_id is not None else _by_key(conn, key or "")
        workflow = _catalog.workflow(conn, run.workflow, run.version)
        detail = run_to_dict(run, list(repo.get_steps(conn, run.id).values()), repo.get_attempts(conn, run.id),
                             workflow.secret_params() if workflow else frozenset(),
                             order=list(workflow.steps) if workflow else ())
    jaeger = settings_of(ctx).jaeger_url
    if jaeger and detail["trace_id"]:
        detail["trace_url"] = f"{jaeger}/trace/{detail['trace_id']}"
    if as_json:
        print_json(console, detail)
        return
    console.print(f"run {detail['id']}  {detail['workflow']} v{detail['version']}  {detail['status']}  "
                  f"{fmt_ms(detail['duration_ms'])}")
    console.print(f"idempotency key {detail['idempotency_key']}")
    if detail["trace_id"]:
        console.print(f"trace {detail['trace_id']}" + (f"  {detail['trace_url']}" if "trace_url" in detail else ""))
    if detail["error"]:
        console.print(f"error: {detail['error']}")
    console.print(steps_table(detail))
    _print_failed_attempts(detail["attempts"])


def _print_failed_attempts(attempts: list[dict[str, Any]]) -> None:
    failed = [a for a in attempts if not a["ok"]]
    if not failed:
        return
    console.print("failed attempts:")
    for a in failed:
        console.print(f"  {a['step']} attempt {a['attempt']} on {a['node'] or '-'} ({a['error_type'] or 'error'}): "
                      f"{a['error']}")
        for line in (a["traceback"] or "").rstrip().splitlines()[-TRACEBACK_LINES:]:
            console.print(f"      {line}")


def _by_key(conn: Connection, key: str) -> RunRow:
    run_id = repo.run_id_for_key(conn, key)
    run = repo.get_run(conn, run_id) if run_id else None
    if run is None:
        raise ConfigError(f"no run has the idempotency key {key!r} (yet: a start is created when a coordinator "
                          "handles it; a rejected one is in `miniflow dead-letters list`)")
    return run


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
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs_cancel(ctx: click.Context, run_id: str, reason: str, wait: bool, as_json: bool) -> None:
    """Cancel a run: no new steps are dispatched, late results are recorded but change nothing. A run
    that has already ended is left as it is (exit 0)."""
    settings, run = _resolve(ctx, run_id)
    key = signing_key(settings, CANCEL_RUN, database_of(ctx))
    if run.status in RUN_TERMINAL:
        say(as_json, {"run_id": run.id, "status": run.status, "cancelled": False},
              f"run {run.id} had already ended ({run.status}): nothing to cancel")
        return
    with Publisher(settings.require_broker(), settings.namespace, key=key) as publisher:
        publisher.cancel_run(run.id, reason)
    if not wait:
        say(as_json, {"run_id": run.id, "status": run.status, "cancel_published": True},
              f"cancel of run {run.id} published")
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
    say(as_json, {"run_id": run.id, "status": status, "cancelled": status == RunStatus.CANCELLED},
          f"run {run.id} is {status}")
    if status != RunStatus.CANCELLED:
        sys.exit(1)


@runs.command("retry")
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Follow the run to its end.")
@click.option("--timeout", default=None, type=float)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON (with --wait, the run).")
@click.pass_context
def runs_retry(ctx: click.Context, run_id: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Re-run a failed or cancelled run from its unfinished steps, keeping succeeded outputs."""
    settings, run = _resolve(ctx, run_id)
    key = signing_key(settings, RETRY_RUN, database_of(ctx))
    if run.status not in RETRYABLE:
        raise ConfigError(f"run {run.id} is {run.status}: only failed or cancelled runs can be retried")
    with Publisher(settings.require_broker(), settings.namespace, key=key) as publisher:
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
        say(as_json, {"run_id": run.id, "retried": True}, f"run {run.id} retried")
        return
    sys.exit(follow(database, run.idempotency_key, "", timeout, as_json))

