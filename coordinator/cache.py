"""The result cache of steps: a step that declares ``cache`` reuses a stored output of the same task
and key instead of being dispatched.

    - name: fetch
      task: http.fetch
      cache: {ttl: 3600, key: "[inputs.plan.url, config.format]"}

The key is the value of the step's ``key`` expression over ``inputs``, ``config`` and ``params``
(by default: its inputs, its config and the params that are not secret); with the task's name it
is hashed (sha256 of canonical JSON) into the entry's digest, so the cache is shared by every step
of that task, in any run of any workflow. When such a step is ready, the coordinator looks its
digest up in the transaction that would dispatch it: a live entry (younger than its ttl) is a hit,
recorded as an attempt of the step on node ``cache`` that succeeded with the stored output,
and what it makes ready is judged at once (and looked up in turn). A miss is dispatched with the
digest on its step row; its success stores the output under it, in the transaction that records
the success (so a success is stored once, whatever the redeliveries). A retry after a failed
attempt does not look again: the cache was looked up for its first attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from miniflow.persistence import AttemptRow, CacheRow, RunRow
from miniflow.persistence import repository as repo
from miniflow.persistence.sealing import open_params
from miniflow.protocol.errors import SealError
from miniflow.protocol.states import StepStatus

from .completion import Settle, Settled
from .expressions import ExpressionError, evaluate
from .outbox import Outbox
from .workflow import StepSpec, Workflow

if TYPE_CHECKING:
    from .runs import Coordinator

CACHE_NODE = "cache"  # the node of an attempt served from the cache

Params = Callable[[], dict[str, Any]]


@dataclass
class Served:
    """What is left to dispatch after the cache hits (each step with its attempt; a cached one has the
    digest to store its output under on its row), or how the run ends (``ended``)."""

    attempts: list[tuple[str, int]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    ended: Settled | None = None


def digest(spec: StepSpec, inputs: dict[str, Any], params: dict[str, Any], secrets: frozenset[str]) -> str:
    """The digest of a cached step's entry; ExpressionError when its key fails on this data."""
    assert spec.cache is not None
    if spec.cache.key is None:
        value: Any = {"config": spec.config, "inputs": inputs,
                      "params": {k: v for k, v in params.items() if k not in secrets}}
    else:
        value = evaluate(spec.cache.key, {"inputs": inputs, "config": spec.config, "params": params})
    try:
        text = json.dumps({"task": spec.task, "key": value}, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:  # keys of mixed types cannot be sorted
        raise ExpressionError(f"its value cannot be made a key: {exc}") from None
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def serve(coordinator: Coordinator, conn: Connection, run: RunRow, workflow: Workflow,
          attempts: Sequence[tuple[str, int]], outputs: dict[str, Any], outbox: Outbox) -> Served:
    """Serve what the cache holds of ``attempts`` (first attempts of ready steps), and of what those
    hits make ready in turn; returns the rest, to dispatch."""
    now = outbox.now

    def params() -> dict[str, Any]:
        return open_params(run.params, coordinator.keys)

    served = Served(outputs=dict(outputs))
    todo = list(attempts)
    opened: dict[str, Any] | None = None
    while todo:
        step, attempt = todo.pop(0)
        spec = workflow.steps.get(step)  # None: an instance of a map step (never cached)
        if spec is None or spec.cache is None:
            served.attempts.append((step, attempt))
            continue
        try:
            opened = params() if opened is None else opened
        except SealError as exc:
            served.ended = Settled(failure=(step, f"the run's secret params cannot be opened: {exc}"))
            return served
        inputs = {need: served.outputs.get(need) for need in spec.needs}
        try:
            key = digest(spec, inputs, opened, workflow.secret_params())
        except ExpressionError as exc:
            served.ended = Settled(failure=(step, f"step {step!r}: its cache key `{spec.cache.key}` could not be "
                                                  f"evaluated: {exc}"))
            return served
        entry = repo.cache_get(conn, key, now)
        if entry is None:
            served.attempts.append((step, attempt))
            repo.update_step(conn, run.id, step, cache_key=key)  # its success is stored under it
            continue
        _record_hit(conn, run, step, attempt, entry, now)
        settled = Settle(conn, run.id, workflow, params)(succeeded=(step, entry.output))
        if settled.failure is not None or settled.run_ended:
            served.ended = settled
            return served
        served.outputs.update(settled.outputs)
        if settled.ready:
            numbers = repo.next_attempts(conn, run.id, settled.ready)
            todo.extend((name, numbers.get(name, 1)) for name in settled.ready)
    return served


def _record_hit(conn: Connection, run: RunRow, step: str, attempt: int, entry: CacheRow, now: datetime) -> None:
    repo.insert_attempt(conn, AttemptRow(run_id=run.id, step=step, attempt=attempt, ok=True, started_at=now,
                                         finished_at=now, duration_ms=0.0, recorded_at=now, output=entry.output,
                                         node=CACHE_NODE))
    note = (f"cache hit: the output of step {entry.step!r} in run {entry.run_id} ({entry.workflow}), stored at "
            f"{entry.created_at.isoformat(timespec='seconds')}, key {entry.digest[:19]}")
    repo.update_step(conn, run.id, step, status=StepStatus.SUCCEEDED, attempt=attempt, output=entry.output,
                     node=CACHE_NODE, started_at=now, finished_at=now, queued_at=now, note=note[:2000])


def store(conn: Connection, run: RunRow, workflow: Workflow, attempt: AttemptRow, key: str | None,
          now: datetime) -> None:
    """Store the output of a cached step's success under the digest it was dispatched with."""
    spec = workflow.steps.get(attempt.step)
    if key is None or spec is None or spec.cache is None or attempt.node == CACHE_NODE:
        return
    size = len(json.dumps(attempt.output, default=str))
    repo.cache_put(conn, CacheRow(digest=key, task=spec.task, workflow=workflow.name, step=attempt.step,
                                  run_id=run.id, output=attempt.output, size=size, created_at=now,
                                  expires_at=now + timedelta(seconds=spec.cache.ttl)))
