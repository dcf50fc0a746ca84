"""`miniflow test --against`: scenario cases on the configured RabbitMQ and Postgres, in real time.

Two targets:
- :class:`StartedWorkers` (``--against``): the engine makes a namespace and a database of its own on
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
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from miniflow.coordinator import Workflow, load_file
from miniflow.coordinator.catalog import Catalog
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.persistence.sealing import new_key_line
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.names import QueueNames
from miniflow.protocol.states import RUN_TERMINAL

from ..client import Client
from ..processes import BIN, WorkerProcess
from .checks import collect, evaluate_checks
from .embedded import check_stubs
from .model import Case, Scenario, ScenarioError
from .remote import CONFIG_KEY, TASK, spec_for
from .results import ERROR, FAILED, PASSED, SKIPPED, CaseResult, SuiteResult

Item = tuple[Scenario, str, Case]
Progress = Callable[[CaseResult, int, int], None]
PROCESS_FAULTS = {"executor_killed"}
EMBEDDED_FAULTS = {"duplicate_step": "a duplicate delivery is made by the embedded broker (run it embedded)",
                   "duplicate_result": "a duplicate delivery is made by the embedded broker (run it embedded)"}
# The settings a started namespace sets itself (the rest, such as TLS options, pass through).
OWN_SETTINGS = {"MINIFLOW_NAMESPACE", "MINIFLOW_DATABASE_URL", "MINIFLOW_KEY", "MINIFLOW_KEY_FILE",
                "MINIFLOW_CORE_PUBLIC_KEYS", "MINIFLOW_DATA_KEY", "MINIFLOW_DATA_KEY_FILE", "MINIFLOW_METRICS_PORT",
                "MINIFLOW_API_URL"}


@dataclasses.dataclass
class Target:
    """Where cases run: settings for a client, the database, and whether the engine controls the
    executors (``managed``)."""

    env: dict[str, str]
    database_url: str
    mode: str
    managed: bool
    restarts: list[str] = dataclasses.field(default_factory=list)

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
        run_id = _drive(target, scenario, copy.name, version, case, began)
        result.faults = target.restarts[restarts:]
        collect(result, target.db, copy, scenario, run_id=run_id,
                letters_after=(letters[0].id or 0) if letters else 0)
        result.checks = evaluate_checks(case.expect, result)
        result.outcome = FAILED if result.failed_checks else PASSED
    except ScenarioError as exc:
        result.outcome, result.reason = ERROR, exc.message if exc.source == scenario.source else str(exc)
    except Exception as exc:  # noqa: BLE001 - a case that breaks is reported as an error; the suite goes on
        result.outcome, result.reason = ERROR, f"{type(exc).__name__}: {exc}"
    result.wall_s = time.monotonic() - began
    return result


def _drive(target: Target, scenario: Scenario, workflow: str, version: int, case: Case, began: float) -> str:
    """Start the run, cancel it when the scenario says so, and wait for its end; its id."""
    handle = target.client.start(workflow, case.params, version=version, key=f"scenario:{uuid.uuid4()}")
    run_id: str | None = None
    cancelled = False
    while True:
        with target.db.connect() as conn:
            run_id = run_id or repo.run_id_for_key(conn, handle.idempotency_key)
            run = repo.get_run(conn, run_id) if run_id else None
            steps = repo.get_steps(conn, run_id) if run_id else {}
        if run is not None and run.status in RUN_TERMINAL:
            return run.id
        after = scenario.cancel_after_step
        row = steps.get(after) if after else None
        if run is not None and row is not None and not cancelled and (row.running or row.attempt > 1
                                                                      or row.status not in ("pending", "queued")):
            target.client.cancel(run.id, "cancelled by the scenario")
            cancelled = True
        if time.monotonic() - began > scenario.timeout_s:
            waiting = [f"{n}: {r.note}" for n, r in steps.items() if r.note]
            raise ScenarioError(scenario.source, scenario.line, f"the run did not end within {scenario.timeout_s:g}s"
                                f" (it is {run.status if run else 'not created: is a coordinator running?'})"
                                + (f"; waiting: {'; '.join(waiting)}" if waiting else ""))
        time.sleep(0.02)


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


def deployed_cluster(environ: Mapping[str, str]) -> Target:
    """The cluster MINIFLOW_BROKER_URL, MINIFLOW_DATABASE_URL and MINIFLOW_NAMESPACE name."""
    env = dict(environ)
    _require(env)
    return Target(env, env["MINIFLOW_DATABASE_URL"], "cluster", managed=False)


def _require(env: Mapping[str, str]) -> None:
    if not env.get("MINIFLOW_BROKER_URL"):
        raise ConfigError("--against needs MINIFLOW_BROKER_URL (the RabbitMQ to run the scenarios on)")
    url = env.get("MINIFLOW_DATABASE_URL") or ""
    if not url.startswith("postgresql"):
        raise ConfigError("--against needs MINIFLOW_DATABASE_URL of a Postgres server (postgresql://...)")


class StartedWorkers:
    """A namespace and a database of the engine's own, with a coordinator and an executor process.
    The executor is restarted when it dies (a scenario's fault or poison step kills it)."""

    def __init__(self, environ: Mapping[str, str], workdir: Path, *, steps: list[str], pools: list[str],
                 threads: int = 8) -> None:
        _require(environ)
        self.workdir, self.steps, self.pools, self.threads = workdir, steps, pools, threads
        suffix = uuid.uuid4().hex[:8]
        self.namespace, self.dbname = f"mfscn_{suffix}", f"miniflow_scenarios_{suffix}"
        admin = make_url(environ["MINIFLOW_DATABASE_URL"])
        self.admin_url = admin.render_as_string(hide_password=False)
        self.database_url = admin.set(database=self.dbname).render_as_string(hide_password=False)
        base = {k: v for k, v in environ.items() if k not in OWN_SETTINGS}
        pythonpath = os.pathsep.join(p for p in (os.getcwd(), environ.get("PYTHONPATH", "")) if p)
        self.env = dict(base, MINIFLOW_NAMESPACE=self.namespace, MINIFLOW_DATABASE_URL=self.database_url,
                        MINIFLOW_DATA_KEY=new_key_line("scenarios"), PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
        self.executor_env: dict[str, str] = {}
        self.coordinator: WorkerProcess | None = None
        self.executor: WorkerProcess | None = None
        self.target: Target | None = None
        self._closing = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="scenario-executor-watch")
        self._created = False

    def start(self) -> Target:
        try:
            self._database("CREATE DATABASE")
            self._created = True
            self._provision()
            self.coordinator = WorkerProcess(self.env, ["--role", "coordinator", "--role", "results", "--threads",
                                                        "8"], self.workdir / "coordinator.log", cwd=os.getcwd())
            self.executor = self._executor()
            self.coordinator.wait_ready()
            self.executor.wait_ready()
        except BaseException:
            self.close()
            raise
        self.target = Target(self.env, self.database_url, "against", managed=True)
        self._supervisor.start()
        return self.target

    def _database(self, verb: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                suffix = " WITH (FORCE)" if verb.startswith("DROP") else ""
                conn.execute(text(f'{verb} "{self.dbname}"{suffix}'))
        except Exception as exc:  # noqa: BLE001 - say what it needs, without the URL (it may hold a password)
            raise ConfigError(f"--against could not {verb.lower()} {self.dbname} on the configured Postgres "
                              f"(the user needs CREATEDB): {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        finally:
            engine.dispose()

    def _miniflow(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "miniflow"), *args], env=self.env, capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise ConfigError(f"`miniflow {' '.join(args)}` failed for the scenario namespace: {done.stderr[-2000:]}")
        return done.stdout

    def _provision(self) -> None:
        """Schema, a core signing key, and keys for the executor and the engine (an operator)."""
        self._miniflow("db", "upgrade")
        public = json.loads(self._miniflow("keys", "core", "init", "--json"))["core_public_keys"]
        tokens = {role: json.loads(self._miniflow("keys", "create", "--name", f"scenarios-{role}", "--role", role,
                                                  "--json"))["token"] for role in ("executor", "operator")}
        self.env.update(MINIFLOW_KEY=tokens["operator"], MINIFLOW_CORE_PUBLIC_KEYS=public)
        self.executor_env = dict(self.env, MINIFLOW_KEY=tokens["executor"])

    def _executor(self) -> WorkerProcess:
        args = ["--role", "executor", "--threads", str(self.threads), "--report-running-after", "0.05"]
        for module in ["miniflow.ops.testengine.remote", *self.steps]:
            args += ["--steps", module]
        for pool in self.pools:
            args += ["--queue", pool]
        log = self.workdir / f"executor-{len(self.target.restarts) if self.target else 0}.log"
        return WorkerProcess(self.executor_env, args, log, cwd=os.getcwd())

    def _supervise(self) -> None:
        while not self._closing.wait(0.05):
            current = self.executor
            if current is None or current.proc.poll() is None:
                continue
            assert self.target is not None
            code = current.proc.returncode
            self.target.restarts.append(f"executor exited ({'killed' if code == -9 else f'code {code}'}): restarted")
            self.executor = self._executor()
            try:
                self.executor.wait_ready()
            except AssertionError as exc:  # tried again on the next pass; the cases waiting on it time out
                self.target.restarts.append(f"executor did not restart: {str(exc)[:300]}")

    def close(self) -> None:
        self._closing.set()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=90)
        if self.executor is not None:
            self.executor.kill()  # the engine's own: a step it still runs (a cancelled one) is not waited for
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.target is not None:
            self.target.close()
        try:
            from miniflow.actors.broker import delete_topology

            delete_topology(self.env["MINIFLOW_BROKER_URL"], QueueNames(self.namespace), self.pools)
        finally:
            if self._created:
                self._database("DROP DATABASE IF EXISTS")
