"""The `miniflow` command line."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import click
from opentelemetry.trace import SpanKind
from rich.console import Console
from rich.live import Live
from rich.table import Table

from coordinator import Coordinator, Workflow, load_file
from persistence import Database
from persistence import repository as repo
from protocol.errors import (
    ConfigError,
    DatabaseUnavailable,
    DefinitionError,
    MiniFlowError,
    ProtocolError,
)
from protocol.names import QueueNames

from . import logging as mf_logging
from .cli_schedules import TIMER_COMMANDS, schedules
from .settings import Settings
from .telemetry import setup as telemetry_setup
from .views import fmt_ms, print_json, run_to_dict, runs_table, secret_params, steps_table

console = Console()
err = Console(stderr=True)
TERMINAL = ("succeeded", "failed", "cancelled")


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj  # type: ignore[no-any-return]


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """-p key=value pairs; values are JSON when they parse as JSON (3, true, [1,2]), else text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-p/--param")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="miniflow")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """MiniFlow: durable DAG workflows on RabbitMQ and Postgres."""
    settings = Settings.from_env()
    mf_logging.configure(settings.log_level, settings.log_format)
    ctx.obj = settings


# -- embedded -------------------------------------------------------------------------------------
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--param", "params", multiple=True, help="Run parameter key=value (repeatable).")
@click.option("--steps", multiple=True, help="Module(s) that register the steps, e.g. examples.steps.")
@click.option("--db", "db_url", default=None, help="Database URL (default: MINIFLOW_DATABASE_URL or ./miniflow.db).")
@click.option("--threads", default=8, show_default=True, help="Worker threads.")
@click.option("--timeout", default=None, type=float, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def run(ctx: click.Context, file: str, params: tuple[str, ...], steps: tuple[str, ...], db_url: str | None,
        threads: int, timeout: float | None, as_json: bool) -> None:
    """Run a workflow FILE in this process (in-memory broker + SQLite): no servers needed."""
    from .runtime import import_steps, run_embedded

    settings = _settings(ctx)
    workflow = load_file(file)
    import_steps(list(steps))
    url = db_url or settings.database_url
    view = LiveView(workflow, quiet=as_json)
    telemetry = telemetry_setup("miniflow-embedded")
    try:
        with view:
            result = run_embedded(workflow, parse_params(params), url, source=file, threads=threads,
                                  timeout=timeout, on_event=view.event)
    finally:
        telemetry.shutdown()
    database = Database(url)
    with database.connect() as conn:
        run_row = repo.get_run(conn, result.run_id)
    database.dispose()
    detail = run_to_dict(run_row, result.steps, result.attempts, workflow.secret_params())
    if as_json:
        print_json(console, detail)
    else:
        console.print(steps_table(detail, title=f"run {result.run_id} of {workflow.name}"))
        style = "green" if result.status == "succeeded" else "red"
        console.print(f"[{style}]run {result.status}[/] in {fmt_ms(detail['duration_ms'])}"
                      + (f": {result.error}" if result.error else ""))
        last = [s for s in detail["steps"] if s["status"] == "succeeded" and workflow.dependents(s["step"]) == []]
        for s in last:
            console.print(f"output of {s['step']}: {json.dumps(s['output'], default=str)[:500]}")
    sys.exit(0 if result.status == "succeeded" else 1)


class LiveView:
    """Prints each step as it starts and finishes; on a terminal, also a live table of steps."""

    def __init__(self, workflow: Workflow, quiet: bool = False) -> None:
        self.workflow = workflow
        self.quiet = quiet
        self.state: dict[str, dict[str, Any]] = {s: {"status": "pending", "attempt": 0, "ms": None}
                                                 for s in workflow.steps}
        self.live = Live(self._table(), console=console, refresh_per_second=8, transient=True) \
            if console.is_terminal and not quiet else None

    def __enter__(self) -> LiveView:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def _table(self) -> Table:
        table = Table(title=f"{self.workflow.name}", title_justify="left")
        for col in ("step", "status", "attempt", "duration"):
            table.add_column(col)
        for name, st in self.state.items():
            table.add_row(name, st["status"], str(st["attempt"] or "-"), fmt_ms(st["ms"]))
        return table

    def event(self, kind: str, data: dict[str, Any]) -> None:
        step = data.get("step")
        if step in self.state:
            st = self.state[step]
            st["attempt"] = data.get("attempt", st["attempt"])
            if kind == "step_started":
                st["status"] = "running"
                line = f"[cyan]▶ {step}[/] started (attempt {st['attempt']})"
            else:
                st["status"] = "succeeded" if data.get("ok") else "failed"
                st["ms"] = data.get("duration_ms")
                line = (f"[green]✔ {step}[/] finished in {fmt_ms(st['ms'])}" if data.get("ok") else
                        f"[red]✘ {step}[/] failed on attempt {st['attempt']}: {data.get('error')}")
            if not self.quiet:
                console.print(line, highlight=False)
        if self.live:
            self.live.update(self._table())


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Check workflow FILES: exit 2 with the file, step and problem when one is invalid."""
    for file in files:
        workflow = load_file(file)
        console.print(f"{file}: ok ({workflow.name}, {len(workflow.steps)} steps)")


# -- database and definitions ---------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Create or migrate the schema (Alembic)."""
    settings = _settings(ctx)
    database = Database(settings.database_url)
    database.upgrade(revision)
    console.print(f"database {database.masked_url} is at {revision}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--version", "version", type=int, default=None,
              help="Store as this version (default: the next one, unless unchanged).")
@click.pass_context
def deploy(ctx: click.Context, file: str, version: int | None) -> None:
    """Store the workflow in FILE as a new (immutable) version."""
    settings = _settings(ctx)
    workflow = load_file(file)
    if version is not None:
        workflow = Workflow(workflow.name, workflow.steps, workflow.params, workflow.description, version,
                            workflow.timeout)
    database = Database(settings.database_url)
    coordinator = Coordinator(QueueNames(settings.namespace))
    try:
        with database.transaction() as conn:
            stored, created = coordinator.deploy(conn, workflow, file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    state = "deployed" if created else "unchanged, already deployed as"
    console.print(f"{workflow.name}: {state} version {stored}")


@cli.group()
def workflows() -> None:
    """Deployed workflows."""


@workflows.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workflows_list(ctx: click.Context, as_json: bool) -> None:
    database = Database(_settings(ctx).database_url)
    with database.connect() as conn:
        rows = repo.list_definitions(conn)
    if as_json:
        print_json(console, [{"name": r["name"], "version": r["version"], "source": r["source"]} for r in rows])
        return
    table = Table("name", "version", "source", "deployed")
    for r in rows:
        table.add_row(r["name"], str(r["version"]), r["source"] or "-", str(r["created_at"])[:19])
    console.print(table)


# -- distributed ----------------------------------------------------------------------------------
@cli.command()
@click.option("--role", "roles", multiple=True, type=click.Choice(["coordinator", "results", "executor"]),
              help="Role(s) to serve (repeatable; default: all three).")
@click.option("--steps", multiple=True, help="Module(s) that register steps (executor role).")
@click.option("--queue", "pools", multiple=True, help="Extra step queue(s) (pools) to consume.")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="Worker threads [default: 16 with the coordinator or results role, which mostly wait on "
                   "the database and the broker; 8 for an executor].")
@click.pass_context
def worker(ctx: click.Context, roles: tuple[str, ...], steps: tuple[str, ...], pools: tuple[str, ...],
           threads: int | None) -> None:
    """Serve actors on this node until SIGINT/SIGTERM (executors need only the broker)."""
    from .runtime import run_worker

    roles_list = list(roles) or (["executor"] if steps and not roles else [])
    if threads is None:
        threads = 16 if {"coordinator", "results"} & set(roles_list or ["coordinator", "results", "executor"]) else 8
    code = run_worker(_settings(ctx), roles_list, list(steps), list(pools), threads,
                      ready=lambda line: click.echo(line, err=True))
    sys.exit(code)


@cli.command()
@click.argument("workflow")
@click.option("-p", "--param", "params", multiple=True, help="Run parameter key=value (repeatable).")
@click.option("--version", "version", type=int, default=None, help="Workflow version (default: latest).")
@click.option("--key", default=None, help="Idempotency key (default: a new one): the same key starts one run.")
@click.option("--priority", default=0, type=click.IntRange(0, 9), show_default=True)
@click.option("--wait", is_flag=True, help="Follow the run to its end (needs MINIFLOW_DATABASE_URL).")
@click.option("--timeout", default=None, type=float, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(ctx: click.Context, workflow: str, params: tuple[str, ...], version: int | None, key: str | None,
          priority: int, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Publish a start-workflow message (exit 0 once confirmed; with --wait, once the run succeeds)."""
    from actors.middleware.tracing import inject, tracer
    from protocol.publisher import Publisher

    settings = _settings(ctx)
    url = settings.require_broker()
    key = key or str(uuid.uuid4())
    telemetry = telemetry_setup("miniflow-cli")
    try:
        with tracer().start_as_current_span(f"start {workflow}", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "rabbitmq", "messaging.operation.type": "send",
                "messaging.destination.name": f"{settings.namespace}.ingress", "miniflow.workflow": workflow}):
            traceparent = inject({}).get("traceparent")
            with Publisher(url, settings.namespace) as publisher:
                message_id = publisher.start_workflow(workflow, params=parse_params(params), version=version,
                                                      idempotency_key=key, priority=priority,
                                                      traceparent=traceparent)
    finally:
        telemetry.shutdown()
    if not wait:
        if as_json:
            print_json(console, {"message_id": message_id, "idempotency_key": key})
        else:
            console.print(f"start of {workflow} published: message {message_id}, idempotency key {key}")
        return
    sys.exit(follow(Database(settings.database_url), key, message_id, timeout, as_json))


def follow(database: Database, key: str, message_id: str, timeout: float | None, as_json: bool) -> int:
    """Wait for the run of an idempotency key, printing its steps as they change; exit code."""
    deadline = time.monotonic() + timeout if timeout else None
    seen: dict[str, tuple[str, int]] = {}
    run_id = None
    while True:
        with database.connect() as conn:
            run_id = run_id or repo.run_id_for_key(conn, key)
            if run_id is None:
                rejected = repo.dead_letters_for_message(conn, message_id) if message_id else []
                if rejected:
                    err.print(f"start rejected: {rejected[0]['code']}: {rejected[0]['detail']}", highlight=False)
                    return 2
            else:
                run = repo.get_run(conn, run_id)
                assert run is not None
                steps = repo.get_steps(conn, run_id)
                if not seen and not as_json:
                    console.print(f"run {run_id} ({run['workflow']} v{run['version']})", highlight=False)
                for name, s in steps.items():
                    now = (s["status"], s["attempt"])
                    if seen.get(name) != now:
                        seen[name] = now
                        if not as_json and s["status"] != "pending":
                            console.print(f"  {name}: {s['status']} (attempt {s['attempt']})", highlight=False)
                if run["status"] in TERMINAL:
                    detail = run_to_dict(run, list(steps.values()), repo.get_attempts(conn, run_id),
                                         secret_params(conn, run["workflow"], run["version"]))
                    if as_json:
                        print_json(console, detail)
                    else:
                        console.print(f"run {run['status']}" + (f": {run['error']}" if run["error"] else ""),
                                      highlight=False)
                    return 0 if run["status"] == "succeeded" else 1
        if deadline is not None and time.monotonic() > deadline:
            err.print(f"timed out after {timeout:g}s waiting for the run" + (f" {run_id}" if run_id else ""))
            return 124
        time.sleep(0.2)


@cli.group()
def runs() -> None:
    """Runs and their steps."""


@runs.command("list")
@click.option("--status", default=None)
@click.option("--workflow", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs_list(ctx: click.Context, status: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    database = Database(_settings(ctx).database_url)
    with database.connect() as conn:
        rows = repo.list_runs(conn, limit=limit, status=status, workflow=workflow)
        items = [run_to_dict(r, secrets=secret_params(conn, r["workflow"], r["version"]))
                 for r in rows] if as_json else []
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
    database = Database(_settings(ctx).database_url)
    with database.connect() as conn:
        run = repo.find_run(conn, run_id)
        if run is None:
            raise ConfigError(f"no run {run_id!r} (give the full id or a unique prefix of 6+ characters)")
        detail = run_to_dict(run, list(repo.get_steps(conn, run["id"]).values()),
                             repo.get_attempts(conn, run["id"]), secret_params(conn, run["workflow"], run["version"]))
    jaeger = _settings(ctx).jaeger_url
    if jaeger and detail["trace_id"]:
        detail["trace_url"] = f"{jaeger}/trace/{detail['trace_id']}"
    if as_json:
        print_json(console, detail)
        return
    console.print(f"run {detail['id']}  {detail['workflow']} v{detail['version']}  {detail['status']}  "
                  f"{fmt_ms(detail['duration_ms'])}", highlight=False)
    if detail["trace_id"]:
        jaeger = _settings(ctx).jaeger_url
        link = f"  {jaeger}/trace/{detail['trace_id']}" if jaeger else ""
        console.print(f"trace {detail['trace_id']}{link}", highlight=False)
    if detail["error"]:
        console.print(f"error: {detail['error']}", highlight=False)
    console.print(steps_table(detail))


def _publish_to_run(ctx: click.Context, run_id: str, action: str, reason: str = "") -> tuple[Settings, str, str]:
    """Resolve a run id (or prefix) in the database, then publish a cancel/retry message for it.
    Returns the settings, the run's full id and the message id."""
    from protocol.publisher import Publisher

    settings = _settings(ctx)
    url = settings.require_broker()
    database = Database(settings.database_url)
    with database.connect() as conn:
        run = repo.find_run(conn, run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r} (give the full id or a unique prefix of 6+ characters)")
    if action == "cancel" and run["status"] in TERMINAL:
        raise ConfigError(f"run {run['id']} already ended ({run['status']})")
    if action == "retry" and run["status"] not in ("failed", "cancelled"):
        raise ConfigError(f"run {run['id']} is {run['status']}: only failed or cancelled runs can be retried")
    with Publisher(url, settings.namespace) as publisher:
        if action == "cancel":
            message_id = publisher.cancel_run(run["id"], reason)
        else:
            message_id = publisher.retry_run(run["id"])
    return settings, run["id"], message_id


def _wait_status(settings: Settings, run_id: str, accept: tuple[str, ...], timeout: float) -> str | None:
    database = Database(settings.database_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with database.connect() as conn:
            run = repo.get_run(conn, run_id)
        if run is not None and run["status"] in accept:
            return str(run["status"])
        time.sleep(0.1)
    return None


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="", help="Recorded as the run's error.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the run shows as ended.")
@click.pass_context
def runs_cancel(ctx: click.Context, run_id: str, reason: str, wait: bool) -> None:
    """Cancel a run: no new steps are dispatched, late results are recorded but change nothing."""
    settings, full_id, _ = _publish_to_run(ctx, run_id, "cancel", reason)
    if not wait:
        console.print(f"cancel of run {full_id} published", highlight=False)
        return
    status = _wait_status(settings, full_id, TERMINAL, 30)
    if status is None:
        raise ConfigError(f"run {full_id} did not end within 30s: is a coordinator worker running?")
    console.print(f"run {full_id} is {status}", highlight=False)
    if status != "cancelled":
        sys.exit(1)


@runs.command("retry")
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Follow the run to its end.")
@click.option("--timeout", default=None, type=float)
@click.pass_context
def runs_retry(ctx: click.Context, run_id: str, wait: bool, timeout: float | None) -> None:
    """Re-run a failed or cancelled run from its unfinished steps, keeping succeeded outputs."""
    settings, full_id, message_id = _publish_to_run(ctx, run_id, "retry")
    database = Database(settings.database_url)
    # The coordinator records the id of every retry it acts on, in the transaction that re-opens the
    # run: that is the proof, however fast the re-run ends again.
    deadline = time.monotonic() + 30
    while True:
        with database.connect() as conn:  # the run first: a retry handled in between is then seen
            run = repo.get_run(conn, full_id)
            if repo.request_handled(conn, message_id):
                break
        if run is not None and run["status"] not in ("failed", "cancelled"):
            raise ConfigError(f"run {full_id} is {run['status']}: it was retried by another request")
        if time.monotonic() > deadline:
            raise ConfigError(f"run {full_id} was not retried within 30s: is a coordinator worker running?")
        time.sleep(0.1)
    if not wait:
        console.print(f"run {full_id} retried", highlight=False)
        return
    with database.connect() as conn:
        key = repo.get_run(conn, full_id)["idempotency_key"]  # type: ignore[index]
    sys.exit(follow(database, key, "", timeout, False))


@cli.group("dead-letters")
def dead_letters() -> None:
    """Rejected messages, archived with their reason."""


@dead_letters.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dead_letters_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    database = Database(_settings(ctx).database_url)
    with database.connect() as conn:
        rows = repo.list_dead_letters(conn, limit)
    items = [{"id": r["id"], "queue": r["queue"], "message_id": r["message_id"], "actor": r["actor"],
              "code": r["code"], "detail": r["detail"], "raw_bytes": len(r["raw"]), "node": r["node"],
              "created_at": str(r["created_at"])} for r in rows]
    if as_json:
        print_json(console, items)
        return
    table = Table("id", "queue", "message", "code", "detail", "when")
    for i in items:
        table.add_row(str(i["id"]), i["queue"], i["message_id"] or "-", i["code"], i["detail"][:80],
                      i["created_at"][:19])
    console.print(table)


cli.add_command(schedules)
for _extra in TIMER_COMMANDS:
    cli.add_command(_extra)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (DefinitionError, ConfigError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(2)
    except DatabaseUnavailable as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(3)
    except (ProtocolError, MiniFlowError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
