"""`miniflow test --against`: scenario cases on the configured RabbitMQ and Postgres, in real time.

Two targets:
- ``workers.StartedWorkers`` (``--against``): the engine makes a namespace and a database of its own on
  the configured services, provisions keys as an operator would, starts a coordinator process and an
  executor process (restarted whenever a fault kills it), and removes all of it at the end;
- :func:`deployed_cluster` (``--against --cluster``): the cluster of MINIFLOW_NAMESPACE as it runs;
  faults that need process control are skipped, and stubs need executors that load
  ``miniflow.ops.testengine.remote``.
Either way each case deploys a copy of its workflow (named ``<workflow>.scenario-<hash>``) in which
stubbed steps run the task of :mod:`.remote`, starts it with a signed start message, acts (cancel)
and waits for it, then reads what the database recorded, as the embedded mode does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from miniflow.coordinator import Workflow, load_file
from miniflow.coordinator.catalog import Catalog
from miniflow.persistence import Database, StepRow
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import ConfigError, DatabaseUnavailable
from miniflow.protocol.states import RUN_TERMINAL

from ..client import Client
from .checks import broke, collect, judge
from .embedded import check_stubs
from .model import Case, Fault, Scenario, ScenarioError, Stub
from .results import ERROR, FAILED, SKIPPED, CaseResult, SuiteResult

if TYPE_CHECKING:
    from .workers import PrivateServices

Item = tuple[Scenario, str, Case]
Progress = Callable[[CaseResult, int, int], None]
PROCESS_FAULTS = {"executor_killed"}
EMBEDDED_FAULTS = {"duplicate_step": "a duplicate delivery is made by the embedded broker (run it embedded)",
                   "duplicate_result": "a duplicate delivery is made by the embedded broker (run it embedded)"}


# The task of remote.py (loaded on executors only with `--steps miniflow.ops.testengine.remote`,
# never by importing this module) and where its step config lives.
TASK = "miniflow.scenario"
CONFIG_KEY = "__scenario__"


def spec_for(stub: Stub | None, real: str | None, killed: set[int], timeout_s: float | None) -> dict[str, Any]:
    """What goes in the step's config for remote.py's task (plain data: it travels in messages)."""
    data: dict[str, Any] = {"real": real, "killed": sorted(killed), "timeout_s": timeout_s, "stub": None}
    if stub is not None:
        data["stub"] = {"output": stub.output, "expr": stub.expr, "fail_attempts": stub.fail_attempts,
                        "error_type": stub.error_type, "error": stub.error, "duration_s": stub.duration_s,
                        "timeout": stub.timeout, "crash": stub.crash}
    return data


@dataclasses.dataclass
class Target:
    """Where cases run: settings for a client, the database, and whether the engine controls the
    executors (``managed``)."""

    env: dict[str, str]
    database_url: str
    mode: str
    managed: bool
    restarts: list[str] = dataclasses.field(default_factory=list)  # what the executor watch did
    services: PrivateServices | None = None  # the engine's own RabbitMQ and Postgres (restart faults)

    def __post_init__(self) -> None:
        self.db = Database(self.database_url)
        self.client = Client.from_env(self.env)

    def close(self) -> None:
        self.client.close()
        self.db.dispose()


def skip_reason(scenario: Scenario, target: Target) -> str | None:
    """Why a case cannot run on this target (it is then skipped with this reason), or None."""
    if scenario.virtual_only:
        return scenario.virtual_only
    if any(stub.fn is not None for stub in scenario.stubs.values()):
        return "a Python stub (fn) runs in the test process only (embedded mode)"
    for fault in scenario.faults:
        if fault.name in EMBEDDED_FAULTS:
            return f"fault {fault.name}: {EMBEDDED_FAULTS[fault.name]}"
    if scenario.restarts and target.services is None:
        return f"fault {scenario.restarts[0].name}: the engine restarts only services it started (run it with " \
               "--against --private-services)"
    if not target.managed:
        if any(f.name in PROCESS_FAULTS for f in scenario.faults) or any(s.crash for s in scenario.stubs.values()):
            return "needs process control over the executors, and a deployed cluster's are not the engine's " \
                   "(run it with --against alone, on workers the engine starts)"
    return None


def deployed_copy(scenario: Scenario, workflow: Workflow) -> Workflow:
    """The workflow with its stubbed (or executor-killed) steps running :mod:`.remote`'s task, under
    a name of its own so that the original's deployed versions are left alone."""
    steps = {}
    for name, spec in workflow.steps.items():
        stub = scenario.stubs.get(name)
        killed = {f.attempt or 1 for f in scenario.faults if f.name == "executor_killed" and f.step == name}
        if stub is None and not killed:
            steps[name] = spec
            continue
        data = spec_for(stub, None if stub is not None else spec.task, killed, spec.timeout)
        steps[name] = dataclasses.replace(spec, task=TASK, config={**spec.config, CONFIG_KEY: data})
    body = json.dumps({n: dataclasses.asdict(s) for n, s in steps.items()}, sort_keys=True, default=str)
    digest = hashlib.sha256(body.encode()).hexdigest()[:10]
    return dataclasses.replace(workflow, name=f"{workflow.name[:100]}.scenario-{digest}", steps=steps)


def _workflow(scenario: Scenario, target: Target) -> Workflow:
    if isinstance(scenario.workflow, Path):
        return load_file(scenario.workflow)
    if target.managed:
        raise ScenarioError(scenario.source, scenario.line, f"the deployed workflow {scenario.workflow!r} is on a "
                            "cluster: run it with --against --cluster")
    with target.db.connect() as conn:
        found = Catalog().workflow(conn, scenario.workflow, None)
    if found is None:
        raise ScenarioError(scenario.source, scenario.line, f"no workflow {scenario.workflow!r} is deployed")
    return found


def run_case_against(target: Target, scenario: Scenario, case_id: str, case: Case) -> CaseResult:
    result = CaseResult(id=case_id, scenario=scenario.name, case=case.name, source=scenario.source,
                        line=scenario.line, mode=target.mode, tags=list(scenario.tags))
    began = time.monotonic()
    reason = skip_reason(scenario, target)
    if reason is not None:
        result.outcome, result.reason = SKIPPED, reason
        return result
    try:
        workflow = _workflow(scenario, target)
        result.workflow = workflow.name
        check_stubs(scenario, workflow)
        copy = deployed_copy(scenario, workflow)
        with target.db.transaction() as conn:
            version, _ = Catalog().deploy(conn, copy, str(scenario.workflow))
            letters = repo.list_dead_letters(conn, limit=1)
        restarts = len(target.restarts)
        notes: list[str] = []
        run_id = _Drive(target, scenario, notes)(copy.name, version, case, began)
        result.faults = notes + target.restarts[restarts:]
        collect(result, target.db, copy, scenario, run_id=run_id,
                letters_after=(letters[0].id or 0) if letters else 0)
        judge(result, case.expect)
    except Exception as exc:  # noqa: BLE001 - a case that breaks is reported as an error; the suite goes on
        broke(result, scenario, exc)
    result.wall_s = time.monotonic() - began
    return result


class _Drive:
    """Starts the run, acts on it (a cancel, service restarts) at the scenario's points, and waits
    for its end."""

    def __init__(self, target: Target, scenario: Scenario, notes: list[str]) -> None:
        self.target, self.scenario, self.notes = target, scenario, notes
        self.pending: list[Fault] = list(scenario.restarts)
        self.cancelled = scenario.cancel_after_step is None
        self.run_id: str | None = None
        self.started = 0.0

    def __call__(self, workflow: str, version: int, case: Case, began: float) -> str:
        handle = self.target.client.start(workflow, case.params, version=version, key=f"scenario:{uuid.uuid4()}")
        self.started = time.monotonic()
        run: Any = None
        steps: dict[str, StepRow] = {}
        while True:
            try:
                run, steps = self._read(handle.idempotency_key)
            except (DBAPIError, DatabaseUnavailable):  # the database is restarting: read again
                pass
            if run is not None and run.status in RUN_TERMINAL:
                if self.pending:
                    raise ScenarioError(self.scenario.source, self.pending[0].line or self.scenario.line,
                                        f"the run ended before fault {self._point(self.pending[0])} (a step needs to "
                                        "run for a moment to be seen running: give its stub a duration)")
                return str(run.id)
            if run is not None:
                self._act(run.id, steps)
            if time.monotonic() - began > self.scenario.timeout_s:
                waiting = [f"{n}: {r.note}" for n, r in steps.items() if r.note]
                raise ScenarioError(self.scenario.source, self.scenario.line, f"the run did not end within "
                                    f"{self.scenario.timeout_s:g}s (it is "
                                    f"{run.status if run else 'not created: is a coordinator running?'})"
                                    + (f"; waiting: {'; '.join(waiting)}" if waiting else ""))
            time.sleep(0.02)

    def _read(self, key: str) -> tuple[Any, dict[str, StepRow]]:
        with self.target.db.connect() as conn:
            self.run_id = self.run_id or repo.run_id_for_key(conn, key)
            if self.run_id is None:
                return None, {}
            return repo.get_run(conn, self.run_id), repo.get_steps(conn, self.run_id)

    def _act(self, run_id: str, steps: dict[str, StepRow]) -> None:
        after = self.scenario.cancel_after_step
        row = steps.get(after) if after else None
        if not self.cancelled and row is not None and (row.running or row.attempt > 1
                                                       or row.status not in ("pending", "queued")):
            self.target.client.cancel(run_id, "cancelled by the scenario")
            self.cancelled = True
        for fault in [f for f in self.pending if self._due(f, steps)]:
            self.pending.remove(fault)
            self._restart(fault)

    def _due(self, fault: Fault, steps: dict[str, StepRow]) -> bool:
        if fault.step is None:
            return time.monotonic() - self.started >= (fault.at_s or 0)
        row = steps.get(fault.step)
        return row is not None and row.running and row.attempt == (fault.attempt or 1)

    @staticmethod
    def _point(fault: Fault) -> str:
        if fault.step is None:
            return f"{fault.name} at {fault.at_s:g}s"
        return f"{fault.name} while step {fault.step} attempt {fault.attempt or 1} runs"

    def _restart(self, fault: Fault) -> None:
        services = self.target.services
        assert services is not None and services.broker is not None and services.database is not None
        began = time.monotonic()
        if fault.name == "broker_restart":
            services.broker.stop_app()
            time.sleep(fault.for_s or 0)  # the outage the scenario asks for
            services.broker.start_app()
        else:
            services.database.stop()
            time.sleep(fault.for_s or 0)
            services.database.start()
        self.notes.append(f"{self._point(fault)}: done, down {time.monotonic() - began:.1f}s")


def run_against(items: list[Item], target: Target, *, jobs: int = 1, fail_fast: bool = False,
                progress: Progress | None = None) -> SuiteResult:
    """Run the cases on ``target``, ``jobs`` at a time; results in the order given."""
    began = time.monotonic()
    results: list[CaseResult | None] = [None] * len(items)
    stop = threading.Event()
    lock = threading.Lock()
    done = [0]

    def one(index: int) -> None:
        scenario, case_id, case = items[index]
        if stop.is_set():
            found = CaseResult(id=case_id, scenario=scenario.name, case=case.name, source=scenario.source,
                               line=scenario.line, mode=target.mode, outcome=SKIPPED, tags=list(scenario.tags),
                               reason="not run: --fail-fast after a failure")
        else:
            found = run_case_against(target, scenario, case_id, case)
        with lock:
            results[index] = found
            done[0] += 1
            if fail_fast and found.outcome in (FAILED, ERROR):
                stop.set()
            if progress is not None:
                progress(found, done[0], len(items))

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="scenario") as pool:
        list(pool.map(one, range(len(items))))
    return SuiteResult([r for r in results if r is not None], time.monotonic() - began, target.mode)


def require_services(env: Mapping[str, str]) -> None:
    if not env.get("MINIFLOW_BROKER_URL"):
        raise ConfigError("--against needs MINIFLOW_BROKER_URL (the RabbitMQ to run the scenarios on)")
    url = env.get("MINIFLOW_DATABASE_URL") or ""
    if not url.startswith("postgresql"):
        raise ConfigError("--against needs MINIFLOW_DATABASE_URL of a Postgres server (postgresql://...)")


def deployed_cluster(environ: Mapping[str, str]) -> Target:
    """The cluster MINIFLOW_BROKER_URL, MINIFLOW_DATABASE_URL and MINIFLOW_NAMESPACE name."""
    env = dict(environ)
    require_services(env)
    return Target(env, env["MINIFLOW_DATABASE_URL"], "cluster", managed=False)
