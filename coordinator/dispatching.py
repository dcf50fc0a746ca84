"""Step messages: the attempts a coordinator dispatches, as messages in its outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from miniflow.persistence import RunRow
from miniflow.persistence.sealing import open_params
from miniflow.protocol.errors import EncodeFailed, SealError
from miniflow.protocol.messages import StepTask
from miniflow.protocol.names import EXECUTE_STEP

from .mapping import Items, inputs_of
from .outbox import Outbox
from .workflow import Workflow

if TYPE_CHECKING:
    from .runs import Coordinator

Groups = dict[tuple[int, datetime | None], list[str]]  # (attempt, result deadline) -> step names


@dataclass(frozen=True)
class Undispatchable:
    """A step message that cannot be sent (over the size limit): the run fails with the reason."""

    step: str
    reason: str


def prepare(coordinator: Coordinator, outbox: Outbox, run: RunRow, workflow: Workflow,
            attempts: Sequence[tuple[str, int]], outputs: dict[str, Any], delay_s: float | None,
            items: Items) -> Groups | Undispatchable:
    """Add the step messages to the outbox; returns the steps by (attempt, result deadline), or
    (with none of them added) the step whose message is over the size limit. ``items``: the
    elements of the instances of map steps among them."""
    mark = outbox.mark()
    groups: Groups = {}
    delay_ms = int(delay_s * 1000) if delay_s else None
    caps = coordinator.caps
    try:
        params = open_params(run.params, coordinator.keys)  # executors get secret params opened
    except SealError as exc:
        return Undispatchable(attempts[0][0], f"the run's secret params cannot be opened: {exc}") \
            if attempts else {}
    for step, attempt in attempts:
        spec = workflow.spec(step)
        task = StepTask(run_id=run.id, workflow=workflow.name, step=step, attempt=attempt,
                        task=spec.task, params=params, config=spec.config,
                        inputs=inputs_of(workflow, step, outputs), timeout_s=spec.timeout,
                        secret_params=workflow.secret_param_list,
                        cap=caps.issue(run.id, step, attempt) if caps is not None else None, map=items.get(step))
        options: dict[str, Any] = {}
        if run.priority:
            options["broker_priority"] = run.priority
        if spec.timeout:
            options["time_limit"] = int(spec.timeout * 1000)
        try:
            outbox.add(coordinator.names.step_queue(spec.queue), EXECUTE_STEP, task.to_payload(), options=options,
                       delay_ms=delay_ms, attributes={"run_id": run.id, "workflow": workflow.name,
                                                      "step": step, "attempt": attempt, "delay_ms": delay_ms})
        except EncodeFailed as exc:
            outbox.discard_since(mark)
            return Undispatchable(step, (
                f"step {step!r} cannot be dispatched: its params and the outputs of the steps it needs "
                f"come to {exc.problem}; return references (paths, keys) instead of bulk data"))
        due = outbox.now + timedelta(seconds=(delay_s or 0) + spec.timeout + coordinator.result_grace_s) \
            if spec.timeout else None
        groups.setdefault((attempt, due), []).append(step)
    return groups
