"""What a step's success, or a skip, sets off in its run: the steps it makes ready, the conditions
(``when``) of those, and the skips that follow from a false condition.

A step whose condition is false is skipped, and so, in turn, is every step that needs a skipped
step (a step runs only when all its needs succeeded). A skip counts as a settled need, like a
success, for the counters of ``repository.counters``: a join is ready when all its needs have
settled, and then runs if none of them was skipped, or is skipped itself. An end that is skipped
counts towards the run's end like one that succeeded, so a run in which the false conditions cut
off whole branches still succeeds, once everything that does run has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from miniflow.persistence import repository as repo
from miniflow.protocol.errors import SealError
from miniflow.protocol.states import StepStatus

from .expressions import ExpressionError, evaluate
from .workflow import Workflow

Params = Callable[[], dict[str, Any]]  # the run's params, opened (called only if a condition needs them)


@dataclass
class Settled:
    """The steps to dispatch now (each at attempt 1, in definition order) and the outputs of their
    needs; or that the run has succeeded; or a condition that could not be evaluated (step, reason)."""

    ready: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    run_succeeded: bool = False
    failure: tuple[str, str] | None = None


class Settle:
    """One pass over a run from settled steps (succeeded, or skipped) to the steps they make ready."""

    def __init__(self, conn: Connection, run_id: str, workflow: Workflow, params: Params) -> None:
        self.conn, self.run_id, self.workflow, self._params = conn, run_id, workflow, params
        self.settled = Settled()
        self._opened: dict[str, Any] | None = None
        self._skipped: list[str] = []  # settled by a skip, their dependents still to see

    def __call__(self, *, succeeded: tuple[str, Any] | None = None, candidates: Sequence[str] = ()) -> Settled:
        """From ``succeeded`` (a step and its output) and/or steps whose needs have all succeeded."""
        if succeeded is not None:
            step, output = succeeded
            self.settled.outputs[step] = output
            if not self._done(step, skipped=False):
                return self.settled
        for name in candidates:
            if not self._consider(name):
                return self.settled
        while self._skipped:
            if not self._done(self._skipped.pop(), skipped=True):
                return self.settled
        self.settled.ready.sort(key=self.workflow.order.__getitem__)
        return self.settled

    def _done(self, step: str, *, skipped: bool) -> bool:
        """Count ``step`` settled; False when that ends the pass (the run succeeded, or a condition broke)."""
        workflow = self.workflow
        dependents = workflow.dependents(step)
        joins = [d for d in dependents if len(workflow.steps[d].needs) > 1]
        ready = [d for d in dependents if len(workflow.steps[d].needs) == 1]
        if joins or not dependents:
            counted = repo.step_succeeded(self.conn, self.run_id, joins, workflow.needs_of_joins.get(step, []),
                                          end=not dependents)
            if counted.open_ends is not None and counted.open_ends <= 0:
                self.settled = Settled(run_succeeded=True)
                return False
            outputs, cut = counted.outputs, counted.skipped
            if counted.ready and not counted.with_outputs:
                found = repo.get_needs(self.conn, self.run_id,
                                       sorted({n for j in counted.ready for n in workflow.steps[j].needs}))
                outputs = {name: output for name, (_, output) in found.items()}
                cut = {name for name, (status, _) in found.items() if status == StepStatus.SKIPPED}
            self.settled.outputs.update(outputs)
            for join in counted.ready:
                skipped_needs = [n for n in workflow.steps[join].needs if n in cut]
                if skipped_needs:
                    self._skip(join, f"skipped: it needs {skipped_needs[0]!r}, which was skipped")
                else:
                    ready.append(join)
        for name in ready:
            if skipped:
                self._skip(name, f"skipped: it needs {step!r}, which was skipped")
            elif not self._consider(name):
                return False
        return True

    def _consider(self, name: str) -> bool:
        """A step whose needs have all succeeded: ready, or skipped by its condition; False when its
        condition cannot be evaluated (the pass ends with that failure)."""
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
            self._skip(name, f"skipped: its condition `{spec.when}` was false")
        return True

    def _skip(self, name: str, why: str) -> None:
        repo.update_step(self.conn, self.run_id, name, status=StepStatus.SKIPPED, note=why[:2000])
        self._skipped.append(name)


def recount(conn: Connection, run_id: str, workflow: Workflow) -> None:
    """Set a run's counters from its steps as they stand (a run from before the counters, or one
    being retried): the one read of every step."""
    steps = repo.get_steps(conn, run_id)
    settled = {name for name, row in steps.items() if row.status == StepStatus.SUCCEEDED}
    waiting = {name: sum(need not in settled for need in spec.needs) for name, spec in workflow.steps.items()
               if name in steps}
    repo.set_counters(conn, run_id, sum(end not in settled for end in workflow.ends), waiting)
