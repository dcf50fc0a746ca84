""""Why isn't my step running?": one step's answer, from the database, the workers registry and the
queue monitor.

The usual causes, each checked: the step waits for the steps it needs; its retry is in its backoff;
no executor consumes its queue (the classic one: a pool with zero consumers); the executors that do
lack its task (they hand it back: the step's note says so); the queue is deep and the step has many
ahead of it; the run has ended or was cancelled; the run is queued for a slot under its
workflow's concurrency limits (which limit, and how many runs hold it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from miniflow.coordinator import Catalog
from miniflow.coordinator.concurrency import why_queued
from miniflow.coordinator.state import backoff_delay
from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import activity
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import BrokerUnavailable, ConfigError
from miniflow.protocol.names import QueueNames
from miniflow.protocol.states import RunStatus, StepStatus

from .queues import QueueReport, queue_report
from .workers import consumers_of, list_workers

MAX_AHEAD_SCAN = 10_000  # waiting steps looked at to count those ahead; past it the count says "at least"


@dataclass(frozen=True)
class Why:
    run_id: str
    step: str
    status: str  # the step's status, or "running" when an executor reported it
    attempt: int
    queue: str | None
    queued_since: datetime | None
    waiting_s: float | None
    ahead: int | None  # steps of the same queue queued before this one and still waiting
    ahead_at_least: bool  # True when the count stopped at MAX_AHEAD_SCAN
    ready_in_queue: int | None
    consumers: int | None  # on the broker
    executors: list[str]  # live processes that say they consume the queue
    reasons: list[str] = field(default_factory=list)  # most likely first
    needs_waiting: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["queued_since"] = self.queued_since.isoformat() if self.queued_since else None
        return out


def spec_of(workflow: Any, step: str) -> Any:
    """The spec of a step, or of the map step an instance (``fan[3]``) belongs to; None if unknown."""
    if workflow is None:
        return None
    try:
        return workflow.spec(step)
    except KeyError:
        return None


def waiting_by_queue(catalog: Catalog, conn: Any, names: QueueNames, limit: int = MAX_AHEAD_SCAN
                     ) -> dict[str, list[dict[str, Any]]]:
    """The waiting steps grouped by the queue their definition routes them to, oldest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in activity.waiting_steps(conn, limit=limit):
        workflow = catalog.workflow(conn, row["workflow"], row["version"])
        spec = spec_of(workflow, row["step"])
        queue = names.step_queue(spec.queue if spec is not None else None)
        out.setdefault(queue, []).append(row)
    return out


def explain(database: Database, catalog: Catalog, names: QueueNames, run_id: str, step: str, *,
            broker_url: str | None, queues: QueueReport | None = None, now: datetime | None = None) -> Why:
    """The answer for one step of one run. ConfigError when the run or step does not exist."""
    now = now or utcnow()
    with database.connect() as conn:
        run = repo.get_run(conn, run_id)
        if run is None:
            raise ConfigError(f"no run {run_id[:40]!r}")
        steps = repo.get_steps(conn, run.id)
        row = steps.get(step)
        if row is None:
            shown = ", ".join(sorted(steps)[:20]) + (", ..." if len(steps) > 20 else "")
            raise ConfigError(f"run {run.id} has no step {step[:130]!r} (its steps: {shown})")
        workflow = catalog.workflow(conn, run.workflow, run.version)
        spec = spec_of(workflow, step)
        queue = names.step_queue(spec.queue if spec is not None else None)
        grouped = waiting_by_queue(catalog, conn, names) if row.status == StepStatus.QUEUED else {}
        slot = why_queued(conn, workflow, run.concurrency_key) \
            if run.status == RunStatus.QUEUED and workflow is not None else None
    running = row.status == StepStatus.QUEUED and row.running_attempt == row.attempt
    status = "running" if running else str(row.status)
    waiting = grouped.get(queue, [])
    mine = next((i for i, w in enumerate(waiting) if w["run_id"] == run.id and w["step"] == step), None)
    ahead = mine if mine is not None else None
    views = list_workers(database, names.namespace)
    executors = [v.node for v in consumers_of(views, queue)]
    stat = None
    if row.status == StepStatus.QUEUED and not running and broker_url:
        try:
            report = queues or queue_report(broker_url, names, [spec.queue] if spec is not None and spec.queue else [])
            stat = report.get(queue)
        except BrokerUnavailable:
            stat = None
    queued_since = row.queued_at
    answer = Why(run_id=run.id, step=step, status=status, attempt=row.attempt, queue=queue,
                 queued_since=queued_since,
                 waiting_s=round((now - queued_since).total_seconds(), 3) if queued_since and not running else None,
                 ahead=ahead, ahead_at_least=len(waiting) >= MAX_AHEAD_SCAN,
                 ready_in_queue=stat.ready if stat is not None else None,
                 consumers=stat.consumers if stat is not None else None, executors=executors)
    answer.reasons.extend([slot] if slot else _reasons(run.status, row, steps, spec, answer, now))
    if row.status == StepStatus.PENDING and spec is not None:
        answer.needs_waiting.extend(n for n in spec.needs if steps.get(n) is None
                                    or steps[n].status not in (StepStatus.SUCCEEDED,))
    return answer


def _reasons(run_status: str, row: Any, steps: dict[str, Any], spec: Any, answer: Why, now: datetime) -> list[str]:
    settled = _settled(run_status, row, steps, spec, answer)
    return settled if settled is not None else _queued(row, spec, answer, now)


def _settled(run_status: str, row: Any, steps: dict[str, Any], spec: Any, answer: Why) -> list[str] | None:
    """The answer when the step is not waiting in a queue (None when it is)."""
    if run_status != RunStatus.RUNNING:
        return [f"the run has ended ({run_status}): nothing of it runs any more"]
    if answer.status == "running":
        return [f"it is running (attempt {row.attempt} on {row.node or 'an executor'})"]
    if row.status == StepStatus.PENDING and row.slot_wait_since is not None:
        return [f"{row.note or 'it waits for a slot of its pool'}; waiting since "
                f"{row.slot_wait_since.isoformat(timespec='seconds')} (`miniflow pools list` shows the pool)"]
    if row.status == StepStatus.PENDING and spec is not None and spec.map is not None and row.step != spec.name:
        return [f"it waits for its turn: at most {spec.map.concurrency} elements of map step {spec.name!r} are out "
                "at once, and each that ends sends the next"]
    if row.status == StepStatus.PENDING:
        needs = list(spec.needs) if spec is not None else []
        waiting = [n for n in needs if steps.get(n) is None or steps[n].status != StepStatus.SUCCEEDED]
        return [f"it waits for the step(s) it needs: {', '.join(waiting) or 'none left (it is about to be queued)'}"]
    if row.status != StepStatus.QUEUED:
        return [f"it is {row.status}: it does not run again unless the run is retried"]
    if spec is not None and spec.map is not None and row.step == spec.name:
        return [f"it is a map step ({row.note or 'its elements run'}): its elements are steps of their own, "
                f"{row.step}[0], {row.step}[1], ...; ask about one of them"]
    return None


def _queued(row: Any, spec: Any, answer: Why, now: datetime) -> list[str]:
    reasons: list[str] = []
    if row.attempt > 1 and spec is not None and answer.queued_since is not None:
        policy = spec.backoff  # the delay after failed attempt n-1, at its jitter's upper end
        limit = backoff_delay(replace(policy, jitter=0.0), row.attempt - 1) * (1 + policy.jitter)
        due_by = (answer.queued_since - now).total_seconds() + limit
        if due_by > 0:
            reasons.append(f"attempt {row.attempt} is a retry: it waits its backoff (at most {limit:.3g} s from "
                           f"{answer.queued_since.isoformat()}, so due within {due_by:.0f} s) in "
                           f"{answer.queue}.DQ")
    if answer.consumers == 0 or (answer.consumers is None and not answer.executors):
        pool = spec.queue if spec is not None and spec.queue else None
        hint = f"--queue {pool}" if pool else "(the default pool)"
        reasons.append(f"no executor consumes {answer.queue}: start one with `miniflow worker --steps MODULE "
                       f"{hint}`")
    if row.note:
        reasons.append(f"an executor said: {row.note[:300]}")
    if answer.ahead:
        more = "+" if answer.ahead_at_least else ""
        consumers = answer.consumers if answer.consumers is not None else len(answer.executors)
        reasons.append(f"{answer.ahead}{more} step(s) of {answer.queue} were queued before it and still wait "
                       f"({consumers} consumer(s))")
    if not reasons:
        reasons.append(f"it is queued in {answer.queue} and should start as soon as an executor takes it "
                       f"({answer.ready_in_queue if answer.ready_in_queue is not None else '?'} ready there)")
    return reasons
