"""The counters that keep a result's cost independent of the width of its run.

``run_steps.waiting`` is the number of a step's needs not yet ended, and ``runs.open_ends`` the
number of the run's ends (steps nothing needs) not yet ended: every step is an end or needed
by one, so the run is over when its ends are. A step's end (a success, a skip, or in a workflow
with trigger rules a failure) takes one off the counter of each
dependent with more than one need (those are ready at 0; a dependent with one need is ready at
once and its counter is not kept up) and, for an end, one off the run's. No result reads the other
steps of its run, and a chain step touches no counter at all. The caller holds the run's lock (the
coordinator's fencing), so the counters move one result at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from miniflow.protocol.states import StepStatus

from ..fastpath import flush, query_after_batch
from ..models import run_steps, runs
from .runs import update_run, update_steps

# One statement on Postgres, sent with the writes batched before it: the counters, the joins as
# they are now, and (only if one of them is now ready) the outputs of the steps they need.
_JOINS = """d AS (
    UPDATE run_steps SET waiting = waiting - 1 WHERE run_id = %(c_run)s AND step = ANY(%(c_joins)s::varchar[])
    RETURNING step, waiting, status)"""
_END = "r AS (UPDATE runs SET open_ends = open_ends - 1 WHERE id = %(c_run)s RETURNING open_ends)"
_ROWS = """SELECT 'step' AS kind, step, waiting AS n, status, NULL::jsonb AS output FROM d
UNION ALL SELECT 'output', s.step, NULL, s.status, s.output FROM run_steps s
    WHERE s.run_id = %(c_run)s AND s.step = ANY(%(c_needs)s::varchar[])
    AND EXISTS (SELECT 1 FROM d WHERE d.waiting = 0 AND d.status = 'pending')"""
_SUCCEEDED = {
    False: f"WITH {_JOINS} {_ROWS}",
    True: f"WITH {_JOINS}, {_END} {_ROWS} UNION ALL SELECT 'run', NULL, open_ends, NULL, NULL FROM r",
}
# Up to this many needs are read in the same statement; more (the join of a wide run, whose needs
# every one of its needs' results would otherwise send) are read once, when the join is ready.
INLINE_NEEDS = 32


@dataclass
class Counted:
    """What one success leaves: the joins now ready, (``with_outputs``) the outputs of the steps
    they need, and for an end the run's ends still open."""

    open_ends: int | None = None
    ready: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, StepStatus] = field(default_factory=dict)  # how those steps ended
    with_outputs: bool = True


def step_succeeded(conn: Connection, run_id: str, joins: Sequence[str], needs: Sequence[str], *,
                   end: bool) -> Counted:
    """Count the end of a step (a success, a skip, a failure that does not end the run): ``joins``
    are its dependents with more than one need and ``needs`` every step those need (their outputs
    and statuses are read here when a join is ready, unless there are more than INLINE_NEEDS:
    ``with_outputs`` is then False and the caller reads what it needs); ``end``: nothing needs the
    step."""
    inline = len(needs) <= INLINE_NEEDS
    if conn.dialect.name == "postgresql":
        found = query_after_batch(conn, _SUCCEEDED[end], {"c_run": run_id, "c_joins": list(joins),
                                                         "c_needs": list(needs) if inline else []})
        return _counted(found, inline)
    flush(conn)
    rows: list[dict[str, Any]] = []
    if joins:
        conn.execute(update(run_steps).where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(joins)))
                     .values(waiting=run_steps.c.waiting - 1))
        rows += [{"kind": "step", "step": step, "n": waiting, "status": status} for step, waiting, status in
                 conn.execute(select(run_steps.c.step, run_steps.c.waiting, run_steps.c.status)
                              .where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(joins))))]
    if end:
        conn.execute(update(runs).where(runs.c.id == run_id).values(open_ends=runs.c.open_ends - 1))
        left = conn.execute(select(runs.c.open_ends).where(runs.c.id == run_id)).scalar_one()
        rows.append({"kind": "run", "n": left})
    if inline and any(r["kind"] == "step" and r["n"] == 0 and r["status"] == StepStatus.PENDING for r in rows):
        rows += [{"kind": "output", "step": step, "status": status, "output": output} for step, status, output in
                 conn.execute(select(run_steps.c.step, run_steps.c.status, run_steps.c.output)
                              .where(run_steps.c.run_id == run_id, run_steps.c.step.in_(list(needs))))]
    return _counted(rows, inline)


def _counted(rows: Sequence[Mapping[str, Any]], inline: bool) -> Counted:
    counted = Counted(with_outputs=inline)
    for row in rows:
        if row["kind"] == "run":
            counted.open_ends = int(row["n"])
        elif row["kind"] == "step" and row["n"] == 0 and row["status"] == StepStatus.PENDING:
            counted.ready.append(str(row["step"]))
        elif row["kind"] == "output":
            counted.outputs[str(row["step"])] = row["output"]
            counted.statuses[str(row["step"])] = StepStatus(row["status"])
    return counted


def set_counters(conn: Connection, run_id: str, open_ends: int, waiting: Mapping[str, int]) -> None:
    """Set the run's counter and its steps' (a run counted afresh: from before the counters, or retried)."""
    update_run(conn, run_id, open_ends=open_ends)
    by_value: dict[int, list[str]] = {}
    for step, count in waiting.items():
        by_value.setdefault(count, []).append(step)
    for count, names in sorted(by_value.items()):
        update_steps(conn, run_id, names, waiting=count)
