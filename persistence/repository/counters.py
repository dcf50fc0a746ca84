"""The counters that keep a result's cost independent of the width of its run.

``runs.open_steps`` is the number of the run's steps not yet succeeded and ``run_steps.waiting`` the
number of a step's needs not yet succeeded. A success takes one off the run's counter and one off
each dependent's, and the dependents that reach 0 while pending are ready: no result reads the
other steps of its run. The caller holds the run's lock (the coordinator's fencing), so the
counters move one result at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from miniflow.protocol.states import StepStatus

from ..fastpath import batch_statement, flush, query_after_batch
from ..models import run_steps, runs
from .runs import update_run, update_steps

# One statement on Postgres, sent with the writes batched before it: both counters, the dependents
# as they are now, and (only if one of them is now ready) the outputs of the steps they need.
_SUCCEEDED = """WITH d AS (
    UPDATE run_steps SET waiting = waiting - 1 WHERE run_id = %(c_run)s AND step = ANY(%(c_deps)s::varchar[])
    RETURNING step, waiting, status, attempt),
r AS (UPDATE runs SET open_steps = open_steps - 1 WHERE id = %(c_run)s RETURNING open_steps)
SELECT 'run' AS kind, NULL::varchar AS step, open_steps AS n, NULL::varchar AS status, NULL::integer AS attempt,
    NULL::jsonb AS output FROM r
UNION ALL SELECT 'step', step, waiting, status, attempt, NULL FROM d
UNION ALL SELECT 'output', s.step, NULL, NULL, NULL, s.output FROM run_steps s
    WHERE s.run_id = %(c_run)s AND s.step = ANY(%(c_needs)s::varchar[])
    AND EXISTS (SELECT 1 FROM d WHERE d.waiting = 0 AND d.status = 'pending')"""


# Up to this many needs are read in the same statement; more (the join of a wide run, whose needs
# every one of its needs' results would otherwise send) are read once, when the join is ready.
INLINE_NEEDS = 32


@dataclass
class Counted:
    """What one success leaves: the run's open steps, the dependents now ready (step, current
    attempt), and (``with_outputs``) the outputs of the steps those need."""

    open_steps: int
    ready: list[tuple[str, int]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    with_outputs: bool = True


def step_succeeded(conn: Connection, run_id: str, dependents: Sequence[str], needs: Sequence[str]) -> Counted:
    """Count the success of a step whose dependents are ``dependents`` (``needs``: every step they
    need, whose outputs are read here when one of them is ready, unless there are more than
    INLINE_NEEDS: ``with_outputs`` is then False and the caller reads the outputs it needs)."""
    inline = len(needs) <= INLINE_NEEDS
    if conn.dialect.name == "postgresql":
        rows = query_after_batch(conn, _SUCCEEDED, {"c_run": run_id, "c_deps": list(dependents),
                                                   "c_needs": list(needs) if inline else []})
        counted = Counted(open_steps=0, with_outputs=inline)
        for row in rows:
            if row["kind"] == "run":
                counted.open_steps = int(row["n"])
            elif row["kind"] == "step" and row["n"] == 0 and row["status"] == StepStatus.PENDING:
                counted.ready.append((str(row["step"]), int(row["attempt"])))
            elif row["kind"] == "output":
                counted.outputs[str(row["step"])] = row["output"]
        return counted
    flush(conn)
    conn.execute(update(run_steps).where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(dependents)))
                 .values(waiting=run_steps.c.waiting - 1))
    conn.execute(update(runs).where(runs.c.id == run_id).values(open_steps=runs.c.open_steps - 1))
    counted = Counted(open_steps=int(conn.execute(select(runs.c.open_steps).where(runs.c.id == run_id)).scalar_one()),
                      with_outputs=inline)
    now = conn.execute(select(run_steps.c.step, run_steps.c.waiting, run_steps.c.status, run_steps.c.attempt)
                       .where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(dependents))))
    counted.ready = [(str(step), int(attempt)) for step, waiting, status, attempt in now
                     if waiting == 0 and status == StepStatus.PENDING]
    if counted.ready and inline:
        found = conn.execute(select(run_steps.c.step, run_steps.c.output)
                             .where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(needs))))
        counted.outputs = {str(step): output for step, output in found}
    return counted


def count_success(conn: Connection, run_id: str, dependents: Sequence[str]) -> None:
    """Take one off the run's counter and off each dependent's, when the caller knows what follows
    (every dependent has this step as its only need, so each is ready): batched on Postgres, no
    answer awaited."""
    if conn.dialect.name == "postgresql":
        batch_statement(conn, "UPDATE run_steps SET waiting = waiting - 1 WHERE run_id = %(c{n}_run)s "
                        "AND step = ANY(%(c{n}_deps)s::varchar[]); UPDATE runs SET open_steps = open_steps - 1 "
                        "WHERE id = %(c{n}_run)s", {"run": run_id, "deps": list(dependents)})
        return
    conn.execute(update(run_steps).where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(dependents)))
                 .values(waiting=run_steps.c.waiting - 1))
    conn.execute(update(runs).where(runs.c.id == run_id).values(open_steps=runs.c.open_steps - 1))


def set_counters(conn: Connection, run_id: str, open_steps: int, waiting: Mapping[str, int]) -> None:
    """Set the run's counter and its steps' (a run counted afresh: from before the counters, or retried)."""
    update_run(conn, run_id, open_steps=open_steps)
    by_value: dict[int, list[str]] = {}
    for step, count in waiting.items():
        by_value.setdefault(count, []).append(step)
    for count, names in sorted(by_value.items()):
        update_steps(conn, run_id, names, waiting=count)
