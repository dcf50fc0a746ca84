"""Map steps: a step run once per element of a list output of a step it needs.

    - name: split
      task: csv.split            # returns {"parts": [...]}
    - name: load
      task: csv.load
      needs: [split]
      map: {over: split.parts, concurrency: 50, on_failure: continue}
    - name: report
      task: csv.report
      needs: [load]              # inputs.load: the list of the elements' outputs, in order

When a map step is ready (its needs ended, its trigger rule and condition say it runs), the
coordinator reads the list out of the needed step's output and makes one instance per element,
``load[0]`` ... ``load[n-1]``: a step of the run with its own attempts, retries and timeout (the map
step's), its element kept on its row. At most ``concurrency`` instances are out at once; each end
dispatches the next pending one. An instance gets its element (``ctx.item``) and index
(``ctx.index``), and the outputs of the map step's other needs as its inputs (the list itself is
not sent again). The map step stays queued while its instances run; when the last has ended it
succeeds with the list of their outputs, and the run goes on from it as from any step. An empty
list succeeds at once with ``[]``. An element that fails for good fails the map step with policy
``fail`` (its instances still out are cancelled, the rest skipped; the run then fails, or goes on
by its trigger rules), and with ``continue`` takes null as its place in the list. A list of more
than MAX_MAP_ELEMENTS elements, or a value that is not a list, fails the map step with a reason
that says so. Running a map step again (a run retry) keeps the instances that succeeded on the
same element, and runs the others.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from miniflow.persistence import AttemptRow, RunRow, StepRow
from miniflow.persistence import repository as repo
from miniflow.persistence.offload import Offload
from miniflow.persistence.sealing import open_params
from miniflow.protocol.errors import ArtifactError
from miniflow.protocol.states import StepStatus

from .completion import Settle, Settled
from .outbox import Outbox, Outgoing
from .state import decide_failure
from .step_options import MAX_MAP_ELEMENTS
from .workflow import MapFailure, MapSpec, Workflow, instance_name, instance_of

if TYPE_CHECKING:
    from .runs import Coordinator

MAX_LIST_BYTES = 64 << 20  # the most of an artifact the coordinator reads for a map's list
Items = dict[str, dict[str, Any]]  # instance -> {"index": i, "item": its element}: the map field of its message


@dataclass
class Spread:
    """What is left to dispatch once the map steps among some ready steps are spread over their
    elements: the other steps and the instances to send now (with their elements), or how the run
    ends (``ended``: a map that cannot be run, or an empty one whose end ended the run)."""

    attempts: list[tuple[str, int]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    items: Items = field(default_factory=dict)
    ended: Settled | None = None
    run: RunRow | None = None  # the run with the error a failed map step gave it, if one did


def elements(spec: MapSpec, output: Any, offload: Offload | None = None) -> list[Any] | str:
    """The list a map step runs over, read out of the needed step's output (what of it is stored as an
    artifact read from the store); a reason when it is not one."""
    value, where = output, spec.over
    try:
        for part in (None, *spec.path):
            if offload is not None:
                value = offload.resolve(value, limit=MAX_LIST_BYTES)
            if part is None:
                continue
            if not isinstance(value, dict) or part not in value:
                return f"its map over {where}.{part}: the output of {where} has no field {part!r}"
            value, where = value[part], f"{where}.{part}"
        if offload is not None:
            value = offload.resolve(value, limit=MAX_LIST_BYTES)
    except ArtifactError as exc:
        return f"its map over {where}: the list could not be read from the artifact store: {exc}"
    if not isinstance(value, list):
        return f"its map over {where}: that is {type(value).__name__ if value is not None else 'null'}, not a list"
    if len(value) > MAX_MAP_ELEMENTS:
        return f"its map over {where}: {len(value)} elements is more than the limit of {MAX_MAP_ELEMENTS}"
    return value


def spread(coordinator: Coordinator, conn: Connection, run: RunRow, workflow: Workflow,
           attempts: Sequence[tuple[str, int]], outputs: dict[str, Any], outbox: Outbox) -> Spread:
    """Spread the map steps among ``attempts`` (ready steps) over their elements; an empty map
    succeeds at once, and what it makes ready is judged in turn. A map whose list cannot be read
    fails: its run at once, or, in a workflow with trigger rules, as a failed step (``run``: the run
    with its error then)."""
    done = Spread(outputs=dict(outputs))
    todo = list(attempts)
    while todo:
        step, attempt = todo.pop(0)
        spec = workflow.steps.get(step)
        if spec is None or spec.map is None:
            done.attempts.append((step, attempt))
            continue
        found = elements(spec.map, done.outputs.get(spec.map.over), coordinator.offload)
        if isinstance(found, str):
            reason = f"step {step!r} cannot run: {found}"
            if not workflow.tolerates_failure:
                done.ended = Settled(failure=(step, reason))
                return done
            run = _failed_map(coordinator, conn, run, step, reason)
            done.run = run
            settled = Settle(conn, run.id, workflow, functools.partial(open_params, run.params, coordinator.keys))(
                failed=step)
        elif _begin(conn, run, step, spec.map, attempt, found, done, outbox):
            continue
        else:
            settled = _succeed(coordinator, conn, run, workflow, step, [] if not found else None, len(found))
        if settled.failure is not None or settled.run_ended:
            done.ended = settled
            return done
        done.outputs.update(settled.outputs)
        numbers = repo.next_attempts(conn, run.id, settled.ready) if workflow.tolerates_failure else {}
        todo.extend((name, numbers.get(name, 1)) for name in settled.ready)
    return done


def _failed_map(coordinator: Coordinator, conn: Connection, run: RunRow, step: str, reason: str) -> RunRow:
    """A map step whose list cannot be read has failed, in a workflow with trigger rules: the run
    (with its first failure as its error) goes on."""
    repo.update_step(conn, run.id, step, status=StepStatus.FAILED, error=reason[:4000], note=None, map_size=None,
                     map_next=None, map_open=None, finished_at=coordinator.clock())
    if run.error is not None:
        return run
    repo.update_run(conn, run.id, error=reason[:4000])
    return dataclasses.replace(run, error=reason[:4000])


def _begin(conn: Connection, run: RunRow, step: str, spec: MapSpec, attempt: int, found: list[Any],
           done: Spread, outbox: Outbox) -> int:
    """Make (or, run again, reset) the instances of map step ``step``, put the first ``concurrency``
    to run into ``done``; the number of elements still to run (0: the map is over already)."""
    earlier = repo.map_instances(conn, run.id, step) if attempt > 1 else {}
    fresh, todo = [], []  # new rows; (index, attempt) of the elements to run
    for index, item in enumerate(found):
        row = earlier.get(index)
        if row is None:
            fresh.append(StepRow(run.id, instance_name(step, index), StepStatus.PENDING, item=item, waiting=0))
            todo.append((index, 1))
        elif row.status != StepStatus.SUCCEEDED or row.item != item:
            repo.update_step(conn, run.id, row.step, status=StepStatus.PENDING, item=item, error=None, note=None,
                             output=None, first_attempt=row.attempt + 1, finished_at=None, slot_wait_since=None,
                             pool=None)
            todo.append((index, row.attempt + 1))
    for index, row in earlier.items():
        if index >= len(found) and row.status != StepStatus.SKIPPED:
            repo.update_step(conn, run.id, row.step, status=StepStatus.SKIPPED, note="skipped: the list it maps "
                             "over is shorter now")
    repo.insert_steps(conn, fresh)
    now_out = todo[:spec.concurrency]
    for index, number in now_out:
        name = instance_name(step, index)
        done.attempts.append((name, number))
        done.items[name] = {"index": index, "item": found[index]}
    following = now_out[-1][0] + 1 if now_out else len(found)
    repo.update_step(conn, run.id, step, status=StepStatus.QUEUED, attempt=attempt, queued_at=outbox.now,
                     started_at=outbox.now, finished_at=None, error=None, result_due_at=None, running_attempt=None,
                     map_size=len(found), map_next=following, map_open=len(todo),
                     note=f"map over {len(found)} element(s), at most {spec.concurrency} at once")
    return len(todo)


def _succeed(coordinator: Coordinator, conn: Connection, run: RunRow, workflow: Workflow, step: str,
             output: list[Any] | None, size: int) -> Settled:
    """Map step ``step`` has ended, every element: it succeeds with their outputs in order (null for
    one that failed under ``continue``); what that makes ready."""
    failed = 0
    if output is None:
        results = repo.map_results(conn, run.id, step, size)
        output = [value if status == StepStatus.SUCCEEDED else None for _, status, value in results]
        failed = sum(status != StepStatus.SUCCEEDED for _, status, _ in results)
    note = f"map over {len(output)} element(s)" + (f"; {failed} failed (on_failure: continue)" if failed else "")
    stored: Any = output
    if coordinator.offload is not None:  # a long list of results travels on as an artifact
        try:
            stored = coordinator.offload.outgoing(output)
        except ArtifactError as exc:
            return Settled(failure=(step, f"step {step!r}: its list of results could not be stored as an "
                                          f"artifact: {exc}"))
    repo.update_step(conn, run.id, step, status=StepStatus.SUCCEEDED, output=stored, finished_at=coordinator.clock(),
                     map_open=0, note=note)
    return Settle(conn, run.id, workflow, lambda: open_params(run.params, coordinator.keys))(
        succeeded=(step, stored))


def element_result(coordinator: Coordinator, conn: Connection, run: RunRow, workflow: Workflow, row: StepRow,
                   attempt: AttemptRow) -> list[Outgoing]:
    """Apply a recorded attempt of an instance (``row``, current under the run's lock, is queued at
    this attempt): its retry, or its end, and what follows for its map step."""
    step, index = instance_of(attempt.step) or ("", 0)
    spec = workflow.steps[step]
    assert spec.map is not None
    outbox = Outbox(conn, coordinator.clock(), coordinator.instrument)
    ended = {"node": attempt.node, "started_at": attempt.started_at, "finished_at": attempt.finished_at,
             "result_due_at": None, "error": attempt.error}
    if attempt.ok:
        repo.update_step(conn, run.id, attempt.step, status=StepStatus.SUCCEEDED, output=attempt.output, **ended)
    else:
        used = attempt.attempt - (row.first_attempt or 1) + 1
        decision = decide_failure(workflow, attempt.step, used, attempt.error, coordinator.rng)
        if decision.retry_delay is not None:
            repo.update_step(conn, run.id, attempt.step, error=attempt.error, node=attempt.node)
            coordinator.dispatch(conn, outbox, run, workflow, [(attempt.step, attempt.attempt + 1)],
                                 other_inputs(conn, run, spec.needs, spec.map), decision.retry_delay,
                                 {attempt.step: {"index": index, "item": row.item}})
            return outbox.flush()
        repo.update_step(conn, run.id, attempt.step, status=StepStatus.FAILED, **ended)
        if spec.map.on_failure == MapFailure.FAIL:
            reason = f"step {step!r} failed: its element {index} failed: {decision.run_error}"
            repo.end_map_instances(conn, run.id, step, f"not run: element {index} of {step!r} failed")
            repo.update_step(conn, run.id, step, status=StepStatus.FAILED, error=reason[:4000], map_open=0,
                             finished_at=coordinator.clock())
            coordinator.step_failed(conn, outbox, run, workflow, step, reason)
            return outbox.flush()
    size, following, left = repo.map_element_ended(conn, run.id, step)
    if left <= 0:
        coordinator.go_on(conn, outbox, run, workflow, _succeed(coordinator, conn, run, workflow, step, None, size))
    else:
        _next(coordinator, conn, outbox, run, workflow, step, size, following)
    return outbox.flush()


def _next(coordinator: Coordinator, conn: Connection, outbox: Outbox, run: RunRow, workflow: Workflow, step: str,
          size: int, following: int) -> None:
    """Dispatch the next pending instance of map step ``step`` from index ``following`` on, if any."""
    if following >= size:  # every element has been dispatched: nothing to move
        return
    spec = workflow.steps[step]
    assert spec.map is not None
    while following < size:
        row = repo.get_step(conn, run.id, instance_name(step, following))
        following += 1
        if row is not None and row.status == StepStatus.PENDING:
            repo.update_step(conn, run.id, step, map_next=following)
            coordinator.dispatch(conn, outbox, run, workflow, [(row.step, row.attempt + 1)],
                                 other_inputs(conn, run, spec.needs, spec.map), None,
                                 {row.step: {"index": following - 1, "item": row.item}})
            return
    repo.update_step(conn, run.id, step, map_next=following)


def other_inputs(conn: Connection, run: RunRow, needs: Sequence[str], spec: MapSpec | None) -> dict[str, Any]:
    """The outputs of a step's needs; of a map step's, all but the one it maps over (its elements'
    inputs)."""
    over = spec.over if spec is not None else None
    found = repo.get_needs(conn, run.id, [need for need in needs if need != over])
    return {name: output for name, (_, output) in found.items()}


def inputs_of(workflow: Workflow, step: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """A step's inputs from the outputs of its needs: an instance of a map step gets those of the map
    step's needs but the list it maps over (its element travels on its own)."""
    spec = workflow.spec(step)
    over = spec.map.over if spec.map is not None and step not in workflow.steps else None
    return {need: outputs.get(need) for need in spec.needs if need != over}
