"""Choosing and running scenario cases: filters (tags, -k), -j worker processes, --fail-fast, and a
progress callback per finished case."""

from __future__ import annotations

import fnmatch
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..worker import import_steps
from .embedded import migrated_template, run_case
from .model import Case, Scenario
from .results import ERROR, FAILED, SKIPPED, CaseResult, SuiteResult

Progress = Callable[[CaseResult, int, int], None]
Item = tuple[Scenario, str, Case]
_ITEMS: list[Item] = []  # what -j workers inherit (forked), by index


def select(scenarios: Iterable[Scenario], *, tags: Iterable[str] = (), keyword: str | None = None) -> list[Item]:
    """The cases to run: every tag of ``tags`` must be on the scenario; ``keyword`` is a substring
    (or a glob with * ?) of the case id."""
    wanted = set(tags)
    items = []
    for scenario in scenarios:
        if not wanted <= set(scenario.tags):
            continue
        for case_id, case in scenario.expanded():
            if keyword and not (keyword in case_id or fnmatch.fnmatch(case_id, keyword)):
                continue
            items.append((scenario, case_id, case))
    return items


def _skipped(scenario: Scenario, case_id: str, case: Case, mode: str, reason: str) -> CaseResult:
    return CaseResult(id=case_id, scenario=scenario.name, case=case.name, source=scenario.source, line=scenario.line,
                      mode=mode, outcome=SKIPPED, reason=reason, tags=list(scenario.tags))


def _run_one(item: Item, workdir: Path) -> CaseResult:
    scenario, case_id, case = item
    if scenario.restarts:
        return _skipped(scenario, case_id, case, "embedded", f"fault {scenario.restarts[0].name} restarts a real "
                        "service: run it with --against --private-services")
    try:
        import_steps(scenario.steps_modules)
    except Exception as exc:  # noqa: BLE001 - ConfigError: a case that cannot start is an error of its own
        return CaseResult(id=case_id, scenario=scenario.name, case=case.name, source=scenario.source,
                          line=scenario.line, mode="embedded", outcome=ERROR, reason=str(exc), tags=list(scenario.tags))
    return run_case(scenario, case_id, case, workdir)


def _worker(index: int, workdir: str) -> CaseResult:
    return _run_one(_ITEMS[index], Path(workdir))


def run_scenarios(scenarios: Iterable[Scenario], *, jobs: int = 1, tags: Iterable[str] = (),
                  keyword: str | None = None, fail_fast: bool = False, progress: Progress | None = None,
                  items: list[Item] | None = None) -> SuiteResult:
    """Run the selected cases embedded; returns every case's result in the order selected."""
    chosen = items if items is not None else select(scenarios, tags=tags, keyword=keyword)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="miniflow-scenarios-") as workdir:
        migrated_template(Path(workdir))  # before any worker process: they copy it
        run = _serial if jobs <= 1 or len(chosen) <= 1 else _parallel
        results = run(chosen, Path(workdir), jobs, fail_fast, progress)
    return SuiteResult(results, time.monotonic() - began, "embedded")


def _not_run(item: Item) -> CaseResult:
    return _skipped(item[0], item[1], item[2], "embedded", "not run: --fail-fast after a failure")


def _lost(item: Item) -> CaseResult:
    lost = _skipped(item[0], item[1], item[2], "embedded", "")
    lost.outcome, lost.reason = ERROR, "the worker process running this case died or hung (run it with -j 1)"
    return lost


def _serial(chosen: list[Item], workdir: Path, jobs: int, fail_fast: bool,
            progress: Progress | None) -> list[CaseResult]:
    results: list[CaseResult] = []
    for item in chosen:
        if fail_fast and any(r.outcome in (FAILED, ERROR) for r in results):
            results.append(_not_run(item))
            continue
        results.append(_run_one(item, workdir))
        if progress is not None:
            progress(results[-1], len(results), len(chosen))
    return results


def _parallel(chosen: list[Item], workdir: Path, jobs: int, fail_fast: bool,
              progress: Progress | None) -> list[CaseResult]:
    results: dict[int, CaseResult] = {}
    _ITEMS[:] = chosen
    context = multiprocessing.get_context("fork")  # workers inherit the cases (and Python stubs)
    try:
        with context.Pool(min(jobs, len(chosen))) as pool:
            pending = {i: pool.apply_async(_worker, (i, str(workdir))) for i in range(len(chosen))}
            # A worker process that dies takes its case with it: bound the wait for each case.
            bound = time.monotonic() + sum(item[0].timeout_s for item in chosen) + 60
            while pending and not (fail_fast and any(r.outcome in (FAILED, ERROR) for r in results.values())):
                for i in [i for i, job in pending.items() if job.ready()]:
                    results[i] = pending.pop(i).get()
                    if progress is not None:
                        progress(results[i], len(results), len(chosen))
                if time.monotonic() > bound:
                    for i in list(pending):
                        pending.pop(i)
                        results[i] = _lost(chosen[i])
                time.sleep(0.01)
            pool.terminate()
            for i in pending:
                results[i] = _not_run(chosen[i])
    finally:
        _ITEMS.clear()
    return [results[i] for i in range(len(chosen))]
