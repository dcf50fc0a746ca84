"""`miniflow run FILE` (the embedded mode) and `miniflow validate FILE...`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.text import Text

from miniflow.coordinator import load_file
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import DefinitionError
from miniflow.protocol.states import RunStatus, StepStatus

from ..embedded import run_embedded
from ..telemetry import setup as telemetry_setup
from ..views import fmt_ms, print_json, run_to_dict, steps_table
from ..worker import import_steps
from .common import console, err, parse_params, settings_of
from .live import LiveView


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--param", "params", multiple=True, help="Run parameter key=value (repeatable).")
@click.option("--steps", multiple=True, help="Module(s) that register the steps, e.g. examples.steps.")
@click.option("--db", "db_url", default=None, help="Database URL (default: MINIFLOW_DATABASE_URL or ./miniflow.db).")
@click.option("--threads", default=8, show_default=True, help="Worker threads.")
@click.option("--timeout", default=None, type=float, help="Give up after this many seconds (exit 124).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def run(ctx: click.Context, file: str, params: tuple[str, ...], steps: tuple[str, ...], db_url: str | None,
        threads: int, timeout: float | None, as_json: bool) -> None:
    """Run a workflow FILE in this process (in-memory broker + SQLite): no servers needed."""
    workflow = load_file(file)
    import_steps(list(steps))
    url = db_url or settings_of(ctx).database_url
    view = LiveView(console, workflow, quiet=as_json)
    telemetry = telemetry_setup("miniflow-embedded")
    try:
        with view:
            result = run_embedded(workflow, parse_params(params), url, source=file, threads=threads,
                                  timeout=timeout, on_event=view.event, keys=settings_of(ctx).data_keys,
                                  offload=settings_of(ctx).offload())
    finally:
        telemetry.shutdown()
    database = Database(url)
    with database.connect() as conn:
        run_row = repo.get_run(conn, result.run_id)
    database.dispose()
    assert run_row is not None
    detail = run_to_dict(run_row, result.steps, result.attempts, workflow.secret_params(), order=list(workflow.steps))
    if as_json:
        print_json(console, detail)
    else:
        console.print(steps_table(detail, title=f"run {result.run_id} of {workflow.name}"))
        style = "green" if result.status == RunStatus.SUCCEEDED else "red"
        console.print(Text.assemble((f"run {result.status}", style), f" in {fmt_ms(detail['duration_ms'])}"
                                    + (f": {result.error}" if result.error else "")))
        for s in detail["steps"]:
            if s["status"] == StepStatus.SUCCEEDED and s["step"] in workflow.ends:  # not instances of a map
                console.print(f"output of {s['step']}: {json.dumps(s['output'], default=str)[:500]}")
    sys.exit(0 if result.status == RunStatus.SUCCEEDED else 1)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def validate(files: tuple[str, ...], as_json: bool) -> None:
    """Check workflow FILES, each of them, reporting every problem (file, step and problem); exit 2
    when any file has one."""
    findings: list[dict[str, Any]] = []
    for file in files:
        try:
            workflow = load_file(file)
        except DefinitionError as exc:
            findings.append({"file": file, "ok": False, "problems": [str(p) for p in exc.problems]})
        else:
            findings.append({"file": file, "ok": True, "workflow": workflow.name, "steps": len(workflow.steps)})
    if as_json:
        print_json(console, findings)
    else:
        for found in findings:
            if found["ok"]:
                console.print(f"{found['file']}: ok ({found['workflow']}, {found['steps']} steps)", markup=False,
                              highlight=False)
            for problem in found.get("problems", []):
                err.print(f"error: {problem}", markup=False, highlight=False)
    if not all(found["ok"] for found in findings):
        sys.exit(2)
