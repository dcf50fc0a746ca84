"""What a step's end sets off in its run: the steps it makes ready, their trigger rules and
conditions (``when``), and the skips that follow.

A step ends by succeeding, by being skipped (its condition was false, or its trigger rule was not
met) or, in a workflow with trigger rules, by failing (without them a failure ends the run at
once, in ``runs``). Each end counts as an ended need in the counters of ``repository.counters``:
a step is ready to be judged when all its needs have ended. Its trigger rule
(``state.trigger_verdict``) then says whether it runs (and its condition, if any, decides), or is
skipped, or is ``upstream_failed``; that is an end too, and the pass goes on from it. Ends that
are skipped count towards the run's end like ones that succeeded: a run whose false conditions
cut off whole branches still succeeds once everything that does run has. When every end has
ended the pass says so (``run_ended``); the caller knows whether anything failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from miniflow.persistence import repository as repo
from miniflow.protocol.errors import SealError
from miniflow.protocol.states import RunStatus, StepStatus

from .expressions import ExpressionError, evaluate
from .state import trigger_verdict
from .workflow import Workflow

Params = Callable[[], dict[str, Any]]  # the run's params, opened (called only if a condition needs them)


@dataclass
class Settled:
    """The steps to dispatch now (each at attempt 1, in definition order) and the outputs of their
    needs; or that every end of the run has ended; or a condition that could not be evaluated
    (step, reason)."""

    ready: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    run_ended: bool = False
    failure: tuple[str, str] | None = None


class Settle:
    """One pass over a run from ended steps to the steps they make ready."""

    def __init__(self, conn: Connection, run_id: str, workflow: Workflow, params: Params) -> None:
        self.conn, self.run_id, self.workflow, self._params = conn, run_id, workflow, params
        self.settled = Settled()
        self._opened: dict[str, Any] | None = None
        self._ended: list[tuple[str, StepStatus]] = []  # ended here (skipped, ...), their dependents still to see

    def __call__(self, *, succeeded: tuple[str, Any] | None = None, failed: str | None = None,
                 candidates: Sequence[str] = ()) -> Settled:
        """From ``succeeded`` (a step and its output), ``failed`` (a step that failed for good, in a
        workflow with trigger rules) and/or ``candidates`` (steps whose needs have all succeeded)."""
        if succeeded is not None:
            step, output = succeeded
            self.settled.outputs[step] = output
            self._ended.append((step, StepStatus.SUCCEEDED))
        if failed is not None:
            self._ended.append((failed, StepStatus.FAILED))
        for name in candidates:
            if not self._judge(name, dict.fromkeys(self.workflow.steps[name].needs, StepStatus.SUCCEEDED)):
                return self.settled
        while self._ended:
            if not self._done(*self._ended.pop()):
                return self.settled
        self.settled.ready.sort(key=self.workflow.order.__getitem__)
        return self.settled

    def _done(self, step: str, outcome: StepStatus) -> bool:
        """Count ``step`` ended; False when that ends the pass (the run is over, or a condition broke)."""
        workflow = self.workflow
        dependents = workflow.dependents(step)
        joins = [d for d in dependents if len(workflow.steps[d].needs) > 1]
        singles = [d for d in dependents if len(workflow.steps[d].needs) == 1]
        if joins or not dependents:
            counted = repo.step_succeeded(self.conn, self.run_id, joins, workflow.needs_of_joins.get(step, ()),
                                          end=not dependents)
            if counted.open_ends is not None and counted.open_ends <= 0:
                self.settled = Settled(run_ended=True)
                return False
            outputs, statuses = counted.outputs, counted.statuses
            if counted.ready and not counted.with_outputs:
                found = repo.get_needs(self.conn, self.run_id,
                                       sorted({n for j in counted.ready for n in workflow.steps[j].needs}))
                outputs = {name: output for name, (_, output) in found.items()}
                statuses = {name: status for name, (status, _) in found.items()}
            self.settled.outputs.update(outputs)
            for join in counted.ready:
                if not self._judge(join, {need: statuses.get(need) for need in workflow.steps[join].needs}):
                    return False
        return all(self._judge(name, {step: outcome}) for name in singles)

    def _judge(self, name: str, needs: dict[str, StepStatus | None]) -> bool:
        """A step whose needs have all ended: its trigger rule, then its condition; False when the
        pass ends (its condition broke)."""
        instead = trigger_verdict(self.workflow.steps[name].trigger, needs)
        if instead is None:
            return self._consider(name)
        self._end(name, *instead)
        return True

    def _consider(self, name: str) -> bool:
        """A step to run if its condition allows: ready, or skipped by it; False when its condition
        cannot be evaluated (the pass ends with that failure)."""
        spec = self.workflow.steps[name]
        if spec.when is None:
            self.settled.ready.append(name)
            return True
        try:
            if self._opened is None:
                self._opened = self._params()
        except SealError as exc:
            self.settled = Settled(failure=(name, f"the run's secret params cannot be opened: {exc}"))
            return False
        inputs = {need: self.settled.outputs.get(need) for need in spec.needs}
        try:
            go = bool(evaluate(spec.when, {"params": self._opened, "inputs": inputs}))
        except ExpressionError as exc:
            self.settled = Settled(failure=(name, f"step {name!r}: its condition `{spec.when}` could not be "
                                                  f"evaluated: {exc}"))
            return False
        if go:
            self.settled.ready.append(name)
        else:
            self._end(name, StepStatus.SKIPPED, f"skipped: its condition `{spec.when}` was false")
        return True

    def _end(self, name: str, status: StepStatus, why: str) -> None:
        repo.update_step(self.conn, self.run_id, name, status=status, note=why[:2000])
        self._ended.append((name, status))


def recount(conn: Connection, run_id: str, workflow: Workflow) -> None:
    """Set a run's counters from its steps as they stand (a run from before the counters, or one
    being retried): the one read of every step."""
    steps = repo.get_steps(conn, run_id)
    settled = {name for name, row in steps.items() if row.status == StepStatus.SUCCEEDED}
    waiting = {name: sum(need not in settled for need in spec.needs) for name, spec in workflow.steps.items()
               if name in steps}
    repo.set_counters(conn, run_id, sum(end not in settled for end in workflow.ends), waiting)


def reopen(conn: Connection, run_id: str, workflow: Workflow) -> None:
    """Re-open an ended run for a retry: its steps that did not succeed are pending again, and so is
    every step that needs one of them (a step that ran after a failure, by its trigger rule, is
    judged again), each with a fresh attempt budget (its attempt numbers go on counting). The run
    is ``queued`` (the coordinator then begins it, or it waits for a slot), its counters counted
    afresh."""
    steps = repo.get_steps(conn, run_id)
    unfinished = [name for name, row in steps.items() if row.status != StepStatus.SUCCEEDED]
    for name in workflow.descendants(unfinished):
        if name in steps:
            repo.update_step(conn, run_id, name, status=StepStatus.PENDING, error=None, note=None,
                             first_attempt=steps[name].attempt + 1, finished_at=None, slot_wait_since=None,
                             pool=None)
    repo.update_run(conn, run_id, status=RunStatus.QUEUED, error=None, finished_at=None, deadline_at=None)
    recount(conn, run_id, workflow)
