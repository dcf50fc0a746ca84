"""Running one scenario case in this process: MiniFlow's embedded engine (dramatiq's in-memory broker
and SQLite) with the scenario's stubs and faults, on a virtual clock (see clock.py)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from dramatiq.message import Message

from miniflow.actors.registry import registry as global_registry
from miniflow.actors.timer import Timer
from miniflow.coordinator import Workflow, load_file
from miniflow.coordinator.schedule_spec import parse_schedule
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import as_utc, use_virtual_clock
from miniflow.protocol.names import EXECUTE_STEP, RECORD_RESULT
from miniflow.protocol.states import RUN_TERMINAL

from ..embedded import EmbeddedEngine
from .checks import broke, collect, judge
from .clock import VirtualClock
from .model import Case, Fault, Scenario, ScenarioError
from .results import CaseResult
from .stubs import build_registry

NO_WAKE_S = 1e8
_template_lock = threading.Lock()
_templates: dict[str, Path] = {}


def migrated_template(workdir: Path) -> Path:
    """A migrated SQLite file to copy per case (migrating takes longer than a case)."""
    with _template_lock:
        path = _templates.get(str(workdir))
        if path is None or not path.exists():
            path = workdir / "template.db"
            db = Database(f"sqlite:///{path}")
            db.upgrade()
            db.dispose()
            _templates[str(workdir)] = path
        return path


class Harness:
    """The broker's interceptor: delayed messages wait for the virtual clock; faults drop, duplicate
    or redeliver messages."""

    def __init__(self, engine: EmbeddedEngine, clock: VirtualClock, faults: list[Fault]) -> None:
        self.engine, self.clock, self.faults = engine, clock, faults
        self.lost: dict[tuple[str, str, int], Any] = {}
        self.applied: list[str] = []
        self.lock = threading.Lock()

    def lose(self, run_id: str, step: str, attempt: int, message: Any) -> None:
        with self.lock:
            self.lost[(run_id, step, attempt)] = message

    def intercept(self, message: Message[Any], delay: int | None, send: Any) -> Message[Any]:
        payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
        if message.actor_name == RECORD_RESULT:
            key = (payload.get("run_id"), payload.get("step"), payload.get("attempt"))
            with self.lock:
                held = self.lost.pop(key, None)  # type: ignore[arg-type]
            if held is not None:  # the executor died before sending it: the step comes back redelivered
                self.applied.append(f"executor died after step {key[1]} attempt {key[2]}: redelivered")
                self.engine.broker.redeliver(held)
                return message
        if delay:
            due = self.clock.now() + timedelta(milliseconds=delay)
            self.clock.call_at(due, lambda: None if self._send(message, send) else None)
            return message
        return self._send(message, send)

    def _send(self, message: Message[Any], send: Any) -> Message[Any]:
        payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
        sent: Message[Any] = send(message, None)
        for fault in self.faults:
            kind = {"duplicate_step": EXECUTE_STEP, "duplicate_result": RECORD_RESULT}.get(fault.name)
            if kind == message.actor_name and payload.get("step") == fault.step \
                    and payload.get("attempt") == (fault.attempt or 1):
                self.applied.append(f"{fault.name} {fault.step} attempt {fault.attempt or 1}")
                send(message, None)
        return sent

    def busy(self) -> int:
        queued: int = sum(q.unfinished_tasks for q in self.engine.broker.queues.values())
        return queued - self.clock.sleepers


def load_workflow(scenario: Scenario) -> Workflow:
    if not isinstance(scenario.workflow, Path):
        raise ScenarioError(scenario.source, scenario.line, f"embedded mode needs a workflow file, not the deployed "
                            f"name {scenario.workflow!r} (run it with --against)")
    return load_file(scenario.workflow)


def check_stubs(scenario: Scenario, workflow: Workflow) -> None:
    """ScenarioError when a stub or a fault names a step the workflow does not have, or a stub
    exceeds a timeout the step does not declare."""
    named = set(scenario.stubs) | {f.step for f in scenario.faults if f.step}
    unknown = sorted(named - set(workflow.steps))
    if unknown:
        raise ScenarioError(scenario.source, scenario.line, f"the scenario names unknown step {unknown[0]!r} "
                            f"(the workflow's steps: {', '.join(workflow.steps)})")
    for name, stub in scenario.stubs.items():
        if stub.timeout and not workflow.steps[name].timeout:
            raise ScenarioError(scenario.source, scenario.line, f"the stub of step {name!r} exceeds its "
                                "timeout, but the step declares no timeout")


def run_case(scenario: Scenario, case_id: str, case: Case, workdir: Path) -> CaseResult:
    result = CaseResult(id=case_id, scenario=scenario.name, case=case.name, source=scenario.source,
                        line=scenario.line, mode="embedded", tags=list(scenario.tags))
    began = time.monotonic()
    clock = VirtualClock(scenario.start_at)
    casedir = Path(tempfile.mkdtemp(dir=workdir, prefix="case-"))
    db_path = casedir / "miniflow.db"
    use_virtual_clock(clock.now)
    engine: EmbeddedEngine | None = None
    try:
        shutil.copyfile(migrated_template(workdir), db_path)
        workflow = load_workflow(scenario)
        result.workflow = workflow.name
        check_stubs(scenario, workflow)
        pools = sorted({s.queue for s in workflow.steps.values() if s.queue})
        holder: dict[str, Harness] = {}
        registry, workflow = build_registry(scenario, workflow, global_registry, clock,
                                            lambda *a: holder["h"].lose(*a))
        engine = EmbeddedEngine(f"sqlite:///{db_path}", threads=4, pools=pools, registry=registry,
                                background=False)
        harness = holder["h"] = Harness(engine, clock, scenario.faults)
        engine.broker.interceptor = harness.intercept
        engine.start()
        version = engine.deploy(workflow, str(scenario.workflow))
        timer = _schedule(engine, scenario, workflow.name, version, clock)
        key = None if timer is not None else engine.submit(workflow.name, case.params, version=version)
        Driver(engine, harness, clock, scenario, key, timer).drive(began)
        result.faults = list(harness.applied)
        collect(result, engine.db, workflow, scenario, key=key)
        judge(result, case.expect)
    except Exception as exc:  # noqa: BLE001 - a case that breaks is reported as an error; the suite goes on
        broke(result, scenario, exc)
    finally:
        clock.close()
        if engine is not None:
            engine.stop()
        use_virtual_clock(None)
        shutil.rmtree(casedir, ignore_errors=True)
    result.wall_s = time.monotonic() - began
    result.virtual_s = (clock.now() - scenario.start_at).total_seconds()
    return result


def _schedule(engine: EmbeddedEngine, scenario: Scenario, workflow: str, version: int,
              clock: VirtualClock) -> Timer | None:
    if scenario.schedule is None:
        return None
    raw = {"name": "scenario", **scenario.schedule}
    try:
        spec = parse_schedule(raw, workflow, source=scenario.source)
    except Exception as exc:  # noqa: BLE001 - DefinitionError: shown with the scenario's name
        raise ScenarioError(scenario.source, scenario.line, f"schedule: {exc}") from None
    from miniflow.coordinator import Scheduler

    with engine.db.transaction() as conn:
        Scheduler(engine.names).add(conn, spec, clock.now())
    return Timer(engine.db, engine.broker, engine.names, clock=clock.now, relay=engine.node.relay,
                 max_sleep_s=NO_WAKE_S)


class Driver:
    """Lets the system run; when it is idle, moves the clock to what is due next. Ends when the run
    has ended (or, for a schedule scenario, when ``until`` is reached and all is idle)."""

    def __init__(self, engine: EmbeddedEngine, harness: Harness, clock: VirtualClock, scenario: Scenario,
                 key: str | None, timer: Timer | None) -> None:
        self.engine, self.harness, self.clock, self.scenario, self.key, self.timer = \
            engine, harness, clock, scenario, key, timer
        start = scenario.start_at
        self.until = start + timedelta(seconds=scenario.until_s) if scenario.until_s is not None else None
        self.moves = sorted(((start + timedelta(seconds=f.at_s or 0), f) for f in scenario.faults
                             if f.name == "clock_moved"), key=lambda m: m[0])
        self.downs = [(start + timedelta(seconds=f.at_s or 0),
                       start + timedelta(seconds=(f.at_s or 0) + (f.for_s or 0)))
                      for f in scenario.faults if f.name == "timer_down"]
        self.timer_wake = clock.now() if timer is not None else None
        self.started: set[str] = set()
        self.cancelled = False
        self.run_id: str | None = None
        self.run: Any = None

    def drive(self, began: float) -> None:
        while True:
            if time.monotonic() - began > self.scenario.timeout_s:
                raise ScenarioError(self.scenario.source, self.scenario.line, f"the case did not end within "
                                    f"{self.scenario.timeout_s:g}s of wall time (virtual time "
                                    f"{self.clock.now().isoformat()})")
            if self.harness.busy() > 0:
                time.sleep(0.0005)
                continue
            if self._act():
                continue
            if self._ended():
                return
            self._advance()

    def _act(self) -> bool:
        """What acts at this instant: a cancel, the timer, the deadline loop; True when it sent something."""
        while not self.engine.events.empty():
            kind, data = self.engine.events.get_nowait()
            if kind == "step_started":
                self.started.add(str(data.get("step")))
        if self.scenario.cancel_after_step in self.started and not self.cancelled and self._run_id():
            assert self.run_id is not None
            self.engine.cancel(self.run_id, "cancelled by the scenario")
            self.harness.applied.append(f"cancel after step {self.scenario.cancel_after_step} started")
            self.cancelled = True
            return True
        now = self.clock.now()
        if self.timer is not None and self.timer_wake is not None and self.timer_wake <= now \
                and not any(a <= now < b for a, b in self.downs):
            delay = self.timer.run_once()
            while delay == 0:  # it fired: the next pass finds the next fire time
                delay = self.timer.run_once()
            self.timer_wake = now + timedelta(seconds=delay) if delay < NO_WAKE_S else None
        deadlines = self.engine.node.reconciler
        if deadlines is not None:  # workflow timeouts, as the coordinator's deadline loop does
            with self.engine.db.transaction() as conn:
                deadlines.reconciler.expire_overdue(conn)
        return self.harness.busy() > 0

    def _run_id(self) -> str | None:
        if self.run_id is None and self.key is not None:
            with self.engine.db.connect() as conn:
                self.run_id = repo.run_id_for_key(conn, self.key)
        return self.run_id

    def _ended(self) -> bool:
        if self.key is None:
            return self.until is not None and self.clock.now() >= self.until
        run_id = self._run_id()
        with self.engine.db.connect() as conn:
            self.run = repo.get_run(conn, run_id) if run_id else None
        return self.run is not None and self.run.status in RUN_TERMINAL

    def _advance(self) -> None:
        now = self.clock.now()
        due = self.clock.next_due()
        if due is not None and due <= now:
            self.clock.advance_to(now)
            return
        deadline = as_utc(self.run.deadline_at) if self.run is not None else None
        if deadline is not None:  # the deadline check fires once the deadline has passed
            deadline += timedelta(milliseconds=1)
        candidates = [d for d in (due, self.timer_wake, self.until, deadline) if d is not None]
        candidates += [b for a, b in self.downs if self.timer_wake is not None and a <= self.timer_wake < b]
        candidates += [at for at, _ in self.moves]
        upcoming = [d for d in candidates if d > now]
        if not upcoming:
            state = self.run.status if self.run is not None else "not created"
            raise ScenarioError(self.scenario.source, self.scenario.line, f"nothing is left to happen but the run "
                                f"is {state}: no message queued, no timer due (a step waiting for an executor "
                                "that never comes?)")
        target = min(upcoming)
        for at, fault in self.moves:
            if now < at <= target:
                target = at + timedelta(seconds=fault.by_s or 0)
                self.harness.applied.append(f"clock moved forward by {fault.by_s:g}s at {at.isoformat()}")
        self.clock.advance_to(target)
