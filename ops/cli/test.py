"""`miniflow test PATH...`: run workflow scenarios (see docs/testing.md).

Exit codes follow pytest's: 0 every case passed (or was skipped), 1 a case failed or broke,
2 a scenario file is invalid or the command is used wrongly, 5 no case was selected.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.text import Text

from miniflow.coordinator import load_file as load_workflow_file
from miniflow.protocol.errors import ConfigError

from ..testengine import junit, report
from ..testengine.against import Item, Progress, deployed_cluster, run_against
from ..testengine.html import write_html
from ..testengine.loader import discover, load_file
from ..testengine.model import Scenario, ScenarioError
from ..testengine.results import PASSED, SKIPPED, CaseResult, SuiteResult
from ..testengine.runner import run_scenarios, select
from ..testengine.workers import PrivateServices, StartedWorkers
from .common import console, err

MARKS = {PASSED: ("PASS", "green"), SKIPPED: ("SKIP", "yellow")}


@click.command("test")
@click.argument("paths", nargs=-1, required=True)
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Run cases in this many processes at once.")
@click.option("--tag", "tags", multiple=True, help="Only scenarios with this tag (repeatable: all of them).")
@click.option("-k", "keyword", default=None, help="Only cases whose id contains this text (or matches this glob).")
@click.option("-x", "--fail-fast", is_flag=True, help="Stop at the first failed case.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write a JUnit XML report here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a self-contained HTML report here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write a JSON report here ('-': stdout).")
@click.option("--collect-only", is_flag=True, help="Validate and list the cases; run nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Show MiniFlow's own log lines while cases run.")
@click.option("--against", is_flag=True, help="Run on the configured RabbitMQ and Postgres (MINIFLOW_BROKER_URL, "
              "MINIFLOW_DATABASE_URL), in real time, on workers started in a namespace and database of their own.")
@click.option("--cluster", is_flag=True, help="With --against: on the running cluster of MINIFLOW_NAMESPACE instead "
              "(faults that need process control are skipped).")
@click.option("--private-services", is_flag=True, help="With --against: on a RabbitMQ and a Postgres the engine "
              "starts for the run (from the installed servers, or containers), which the restart faults restart.")
def test(paths: tuple[str, ...], jobs: int, tags: tuple[str, ...], keyword: str | None, fail_fast: bool,
         junit_path: str | None, html_path: str | None, json_path: str | None, collect_only: bool,
         verbose: bool, against: bool, cluster: bool, private_services: bool) -> None:
    """Run the workflow scenarios in PATHS (files, or folders holding *.scenario.yaml) embedded: one
    process, in-memory broker, SQLite, and a virtual clock, so backoffs and cron ticks take no time.
    With --against, on real services instead (see docs/testing.md)."""
    if (cluster or private_services) and not against:
        raise click.UsageError("--cluster and --private-services go with --against")
    if cluster and private_services:
        raise click.UsageError("--private-services starts workers of its own: it does not go with --cluster")
    scenarios = _load(paths)
    items = select(scenarios, tags=tags, keyword=keyword)
    if collect_only:
        for _, case_id, _ in items:
            console.print(Text(case_id))
        console.print(Text(f"{len(items)} case(s) in {len(scenarios)} scenario(s)"))
        sys.exit(0 if items else 5)
    if not items:
        err.print(Text(f"no case selected (from {len(scenarios)} scenario(s)): check the paths, --tag and -k"))
        sys.exit(5)
    if not verbose:
        logging.getLogger("miniflow").setLevel(logging.CRITICAL)
        logging.getLogger("dramatiq").setLevel(logging.CRITICAL)
    progress = _progress(console.is_terminal)
    if against:
        suite = _against(items, jobs, fail_fast, progress, cluster, private_services)
    else:
        suite = run_scenarios(scenarios, jobs=jobs, fail_fast=fail_fast, progress=progress, items=items)
    report.summary(suite, console)
    _write_reports(suite, junit_path, html_path, json_path)
    sys.exit(suite.exit_code)


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that the workers, the namespace and the database are removed


def _against(items: list[Item], jobs: int, fail_fast: bool, progress: Progress, cluster: bool,
             private: bool) -> SuiteResult:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)
    try:
        if cluster:
            target = deployed_cluster(os.environ)
            try:
                return run_against(items, target, jobs=jobs, fail_fast=fail_fast, progress=progress)
            finally:
                target.close()
        began = time.monotonic()
        services = PrivateServices() if private else None
        try:
            with tempfile.TemporaryDirectory(prefix="miniflow-against-") as workdir:
                workers = StartedWorkers(os.environ, Path(workdir), steps=_modules(items), pools=_pools(items),
                                         threads=max(8, 4 * jobs), services=services)
                target = workers.start()
                err.print(Text(f"workers ready in namespace {workers.namespace}"
                               f"{' on private services' if private else ''} ({time.monotonic() - began:.1f}s)"))
                try:
                    return run_against(items, target, jobs=jobs, fail_fast=fail_fast, progress=progress)
                finally:
                    workers.close()
        finally:
            if services is not None:
                services.close()
    except ConfigError as exc:
        err.print(Text(f"cannot run --against: {exc}"))
        sys.exit(2)


def _modules(items: list[Item]) -> list[str]:
    return sorted({module for scenario, _, _ in items for module in scenario.steps_modules})


def _pools(items: list[Item]) -> list[str]:
    pools: set[str] = set()
    for path in {scenario.workflow for scenario, _, _ in items if isinstance(scenario.workflow, Path)}:
        try:
            pools |= {s.queue for s in load_workflow_file(path).steps.values() if s.queue}
        except Exception:  # noqa: BLE001, S112 - a workflow that does not load fails its own cases
            continue
    return sorted(pools)


def _load(paths: tuple[str, ...]) -> list[Scenario]:
    try:
        return [scenario for path in discover(paths) for scenario in load_file(path)]
    except ScenarioError as exc:
        err.print(Text(f"invalid scenario: {exc}"))
        sys.exit(2)


def _progress(live: bool) -> Callable[[CaseResult, int, int], None]:
    def progress(case: CaseResult, done: int, total: int) -> None:
        mark, style = MARKS.get(case.outcome, (case.outcome.upper(), "red"))
        if live or case.outcome != PASSED:  # in a log, only what needs a look
            console.print(Text.assemble((f"{mark:<7}", style), f"[{done}/{total}] ", case.id,
                                        (f"  {case.wall_s:.2f}s", "dim")))
    return progress


def _write_reports(suite: SuiteResult, junit_path: str | None, html_path: str | None, json_path: str | None) -> None:
    if junit_path:
        junit.write_junit(suite, junit_path)
    if html_path:
        write_html(suite, html_path)
    if json_path:
        text = json.dumps(report.to_json(suite), indent=2, default=str)
        if json_path == "-":
            click.echo(text)
        else:
            Path(json_path).write_text(text, encoding="utf-8")
