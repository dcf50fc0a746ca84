"""Slots of step pools: at most N steps of a pool (a step queue, `queue:` in a workflow) dispatched
at once, across every run and workflow. An operator sets the limit (`miniflow pools set gpu
--slots 2`); a pool without one is not limited (its executors' threads still are).

A step of a limited pool that becomes ready takes a free slot and is dispatched, or waits: it stays
``pending`` with the pool and the time it began to wait on its row, its note saying so (the UI,
`miniflow why`). A step holds its slot while it is queued (through the backoff of its retries),
and gives it back when it ends, however it ends (a run cancelled or failed gives back those of its
steps). Once the transaction that gives a slot back has committed, the node admits the waiting
steps that now have one in a transaction of its own (``give_back``: so that no transaction takes
two pools' rows out of order), higher run priority first, then the longest waiting; a new ready
step joins the line behind them. The reconciler's pass admits again what was skipped (a run
another transaction held, a node that died between the two) or what a raised limit made room for.
Every admission first takes the pool's row (``repository.pools``), so several coordinators decide
one pool's admissions one at a time and never overshoot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from miniflow.persistence import RunRow, after_commit
from miniflow.persistence import repository as repo
from miniflow.protocol.states import RunStatus, StepStatus

from .mapping import other_inputs
from .outbox import Outbox, Outgoing
from .workflow import Workflow, instance_of

if TYPE_CHECKING:
    from .runs import Coordinator

PAGE = 200  # waiting steps looked at per admission pass of a pool
UNLIMITED = 10_000  # the admissions of one pass of a pool whose limit was taken away


def admit(conn: Connection, run: RunRow, workflow: Workflow, attempts: Sequence[tuple[str, int]],
          outbox: Outbox) -> tuple[list[tuple[str, int]], list[str]]:
    """Of ``attempts`` (steps about to be dispatched), those that may go now: every one of a pool
    without a limit, and of a limited pool as many as it has free slots (they are marked as holding
    one). The others wait, pending, for a slot. A pool that has steps waiting already takes the new
    ones into its line; it is returned with them, for the caller to admit its line once what went
    is queued (``admit_waiting``)."""
    pooled = sorted({pool for pool in (workflow.spec(step).queue for step, _ in attempts) if pool})
    limits = repo.pool_limits(conn, pooled) if pooled else {}
    if not limits:
        return list(attempts), []
    free: dict[str, int] = {}
    behind: list[str] = []  # pools with a line: their new steps join it
    for name in sorted(limits):  # every transaction takes pool rows in the same order
        slots = repo.lock_pool(conn, name, outbox.now)
        free[name] = UNLIMITED if slots is None else slots - repo.slots_in_use(conn, name)
        if slots is not None and free[name] > 0 and repo.waiting_for_slots(conn, name, 1):
            free[name] = 0
            behind.append(name)
    going: list[tuple[str, int]] = []
    holding: dict[str, list[str]] = {}
    waiting: dict[str, list[str]] = {}
    for step, attempt in attempts:
        pool = workflow.spec(step).queue
        if pool is None or pool not in free:
            going.append((step, attempt))
        elif free[pool] > 0:
            free[pool] -= 1
            going.append((step, attempt))
            holding.setdefault(pool, []).append(step)
        else:
            waiting.setdefault(pool, []).append(step)
    for pool, names in holding.items():
        repo.update_steps(conn, run.id, names, pool=pool, slot_wait_since=None)
    for pool, names in waiting.items():
        repo.update_steps(conn, run.id, names, pool=pool, slot_wait_since=outbox.now,
                          note=f"waiting for a slot of pool {pool!r} ({limits[pool]} slot(s), none free for it)")
    return going, behind


def admit_waiting(coordinator: Coordinator, conn: Connection, pool: str, outbox: Outbox) -> int:
    """Dispatch the steps waiting for a slot of ``pool`` that now have one, the first in line first;
    how many went."""
    slots = repo.lock_pool(conn, pool, outbox.now)
    repo.clear_ended(conn, pool)
    went = 0
    for run_id, step in repo.waiting_for_slots(conn, pool, PAGE):
        # counted again each time: a dispatch that fails its run may begin queued runs, whose steps
        # take slots of their own
        if (went >= UNLIMITED) if slots is None else repo.slots_in_use(conn, pool) >= slots:
            break
        run = repo.lock_run_unless_taken(conn, run_id)  # our own run's row we hold already
        row = repo.get_step(conn, run_id, step) if run is not None and run.status == RunStatus.RUNNING else None
        if run is None or row is None or row.status != StepStatus.PENDING or row.slot_wait_since is None:
            continue
        workflow = coordinator.catalog.workflow(conn, run.workflow, run.version)
        if workflow is None:  # pragma: no cover - definitions are never deleted
            continue
        outputs, items = _inputs(conn, run, workflow, step, row.item)
        repo.update_step(conn, run_id, step, pool=pool, slot_wait_since=None, note=None)  # it holds a slot now
        coordinator.dispatch(conn, outbox, run, workflow, [(step, row.attempt + 1)], outputs, None, items,
                             slotted=True)
        went += 1
    return went


def _inputs(conn: Connection, run: RunRow, workflow: Workflow, step: str,
            item: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The outputs a waiting step's message carries (for an element of a map step, its element)."""
    spec = workflow.spec(step)
    mapped = instance_of(step) if step not in workflow.steps else None
    outputs = other_inputs(conn, run, spec.needs, spec.map if mapped is not None else None)
    return outputs, ({step: {"index": mapped[1], "item": item}} if mapped is not None else {})


def released(coordinator: Coordinator, conn: Connection, pools: Sequence[str],
             outbox: Outbox | None = None) -> list[Outgoing]:
    """Slots of ``pools`` may have been given back: admit what waits for them. The messages go into
    ``outbox``, or (without one) are returned."""
    limited = [pool for pool in pools if pool]
    if not limited:
        return []
    box = outbox or Outbox(conn, coordinator.clock(), coordinator.instrument)
    for pool in sorted(set(limited)):
        admit_waiting(coordinator, conn, pool, box)
    return [] if outbox is not None else box.flush()


def give_back(coordinator: Coordinator, conn: Connection, limited: list[str]) -> None:
    """Slots of ``limited`` pools came back in this transaction (or new steps joined their lines):
    admit the steps waiting for them once it has committed, in a transaction of their own
    (``coordinator.admit_later``; it takes the pools' rows in order, where this one may hold another
    pool's), or else in this one."""
    later, publish = coordinator.admit_later, coordinator.publish
    if later is not None:
        after_commit(conn, lambda: later(limited))
        return
    sent = released(coordinator, conn, limited)
    if sent and publish is not None:
        after_commit(conn, lambda: publish(sent))


def pools_of(workflow: Workflow) -> list[str]:
    """The pools a workflow's steps go to."""
    return sorted({spec.queue for spec in workflow.steps.values() if spec.queue})
