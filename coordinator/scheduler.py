"""The scheduler service: schedules and the ticks they fire, inside transactions the caller owns.

Given a transaction and an instant, :class:`Scheduler` records what happens to each due tick in
the ledger and queues the start_workflow (and cancel_run) messages in the outbox, in the same
transaction. The ledger's UNIQUE (schedule_id, due_at) makes a tick fire once, whatever the number
of timers; the coordinator makes one run per idempotency key ``schedule:<id>:<due>``. ``now`` is
always a parameter; the maths is in ``cron`` and the per-tick decisions in ``schedule_policy``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from miniflow.persistence import ScheduleRow, TickRow
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import schedules as srepo
from miniflow.persistence.rows import values_of
from miniflow.persistence.sealing import KeyRing, open_params, seal_params
from miniflow.protocol.errors import DefinitionError, MessageRejected
from miniflow.protocol.messages import CancelRun, StartWorkflow
from miniflow.protocol.names import CANCEL_RUN, START_WORKFLOW, QueueNames
from miniflow.protocol.states import RUN_TERMINAL

from .catalog import Catalog
from .cron import check_fires, next_fire, parse_cron, ticks_between
from .outbox import Outbox, Outgoing
from .params import resolve_params
from .schedule_policy import (
    STARTED_OUTCOMES,
    CatchUp,
    CatchUpPolicy,
    OverlapAction,
    OverlapPolicy,
    TickOutcome,
    jitter_for,
    overlap_action,
    plan_ticks,
    tick_key,
)
from .schedule_spec import ScheduleSpec

MAX_BATCH = 1000  # ticks recorded per transaction when catching up a long outage
IN_FLIGHT_S = 60.0  # a start sent this recently whose run does not exist yet counts as running


class Scheduler:
    """Schedules and their ticks. ``node`` names the timer in the ledger rows it writes."""

    def __init__(self, names: QueueNames, *, node: str | None = None, catalog: Catalog | None = None,
                 keys: KeyRing | None = None) -> None:
        self.names = names
        self.node = node
        self.catalog = catalog or Catalog()
        self.keys = keys  # seals the secret params a schedule stores

    # -- definitions ------------------------------------------------------------------------------
    def add(self, conn: Connection, spec: ScheduleSpec, now: datetime, *, replace: bool = False,
            source: str | None = None) -> tuple[ScheduleRow, bool]:
        """Store a schedule (or replace one of the same name); returns (row, created)."""
        where = f"schedule {spec.name!r}"
        workflow = self.catalog.workflow(conn, spec.workflow, spec.version)
        if workflow is None:
            what = f"workflow {spec.workflow!r}" + (f" version {spec.version}" if spec.version else "")
            raise DefinitionError(where, f"{what} is not deployed (run `miniflow deploy FILE` first)")
        try:
            resolve_params(workflow, spec.params)
        except MessageRejected as exc:
            raise DefinitionError(where, exc.detail) from None
        params = seal_params(spec.params, workflow.secret_params(), self.keys)
        first = check_fires(parse_cron(spec.cron, spec.timezone, where), now, spec.start, spec.end, where)
        existing = srepo.get_schedule(conn, spec.name)
        if existing is not None and not replace:
            raise DefinitionError(where, "already exists (use --replace to change it)")
        row = ScheduleRow(
            id=existing.id if existing else str(uuid.uuid4()), name=spec.name, workflow=spec.workflow,
            cron=spec.cron, timezone=spec.timezone, params=params, catch_up=spec.catch_up.policy,
            overlap=spec.overlap, created_at=existing.created_at if existing else now, updated_at=now,
            version=spec.version, start_at=spec.start, end_at=spec.end, jitter_s=spec.jitter_s,
            catch_up_limit=spec.catch_up.limit, catch_up_grace_s=spec.catch_up.grace_s, priority=spec.priority,
            paused=spec.paused, next_due_at=first, source=source)
        if existing is not None:
            srepo.update_schedule(conn, existing.id, **{k: v for k, v in values_of(row).items()
                                                        if k not in ("id", "created_at")})
        elif not srepo.insert_schedule(conn, row):
            raise DefinitionError(where, "already exists (created concurrently)")
        stored = srepo.get_schedule(conn, spec.name)
        assert stored is not None
        return stored, existing is None

    def _named(self, conn: Connection, name: str) -> ScheduleRow:
        row = srepo.get_schedule(conn, name)
        if row is None:
            raise DefinitionError(f"schedule {name!r}", "does not exist (see `miniflow schedules list`)")
        locked = srepo.lock_schedule(conn, row.id)
        assert locked is not None
        return locked

    def pause(self, conn: Connection, name: str, now: datetime) -> bool:
        row = self._named(conn, name)
        srepo.update_schedule(conn, row.id, paused=True, updated_at=now)
        return not row.paused

    def resume(self, conn: Connection, name: str, now: datetime) -> datetime | None:
        """Resume from now on: ticks that fell while paused are neither fired nor recorded."""
        row = self._named(conn, name)
        cron = parse_cron(row.cron, row.timezone, f"schedule {name!r}")
        begin = max(now, row.start_at - timedelta(seconds=1)) if row.start_at else now
        due = next_fire(cron, begin)
        if due is not None and row.end_at is not None and due > row.end_at:
            due = None
        srepo.update_schedule(conn, row.id, paused=False, next_due_at=due, updated_at=now)
        return due

    def delete(self, conn: Connection, name: str) -> None:
        srepo.delete_schedule(conn, self._named(conn, name).id)

    def trigger(self, conn: Connection, name: str, now: datetime) -> tuple[str, list[Outgoing]]:
        """Fire once now, outside the cron (ledger kind 'manual'); overlap policy not applied."""
        row = self._named(conn, name)
        key = tick_key(row.id, now)
        outbox = Outbox(conn, now)
        if not srepo.insert_ticks(conn, [self._tick(row, now, now, TickOutcome.MANUAL, key, "triggered by hand",
                                                    "manual")]):
            raise DefinitionError(f"schedule {name!r}", "a tick at this instant exists already; try again")
        self._start(outbox, row, key)
        return key, outbox.flush()

    # -- the timer --------------------------------------------------------------------------------
    def _tick(self, row: ScheduleRow, due: datetime, now: datetime, outcome: TickOutcome, key: str | None,
              detail: str | None = None, kind: str = "cron") -> TickRow:
        return TickRow(schedule_id=row.id, due_at=due, kind=kind, outcome=outcome, fired_at=now,
                       lateness_ms=round((now - due).total_seconds() * 1000, 3), idempotency_key=key,
                       detail=detail, node=self.node)

    def _start(self, outbox: Outbox, row: ScheduleRow, key: str) -> None:
        start = StartWorkflow(workflow=row.workflow, version=row.version,
                              params=open_params(row.params or {}, self.keys), idempotency_key=key,
                              priority=row.priority)
        outbox.add(self.names.ingress, START_WORKFLOW, start.to_payload())

    def previous_run(self, conn: Connection, row: ScheduleRow, now: datetime) -> tuple[bool, str | None]:
        """(still running, its run id) of the last run this schedule started."""
        last = srepo.last_started(conn, row.id, sorted(STARTED_OUTCOMES))
        if last is None or not last.idempotency_key:
            return False, None
        run_id = repo.run_id_for_key(conn, last.idempotency_key)
        if run_id is None:  # sent, not created yet (or rejected long ago)
            return (now - last.fired_at).total_seconds() < IN_FLIGHT_S, None
        run = repo.get_run(conn, run_id)
        return (run is not None and run.status not in RUN_TERMINAL), run_id

    def fire_at(self, row: ScheduleRow, due: datetime) -> datetime:
        return due + jitter_for(row.id, due, row.jitter_s)

    def process(self, conn: Connection, schedule_id: str, now: datetime) -> tuple[list[Outgoing], bool]:
        """Record every due tick of one schedule and queue its starts; (messages, more to do)."""
        row = srepo.lock_schedule(conn, schedule_id)
        if row is None or row.paused or row.next_due_at is None:
            return [], False
        first = row.next_due_at
        if self.fire_at(row, first) > now:
            return [], False
        cron = parse_cron(row.cron, row.timezone, f"schedule {row.name!r}")
        catch_up = CatchUp(row.catch_up, row.catch_up_limit, row.catch_up_grace_s)
        keep = catch_up.limit if catch_up.policy == CatchUpPolicy.ALL else \
            1 if catch_up.policy == CatchUpPolicy.LATEST else 0
        later = ticks_between(cron, first, now, MAX_BATCH + keep)
        ticks = [first, *later]
        due_ticks: list[datetime] = []
        for tick in ticks:
            if (row.end_at is not None and tick > row.end_at) or self.fire_at(row, tick) > now:
                break
            due_ticks.append(tick)
        if not due_ticks:  # the window ended
            srepo.update_schedule(conn, schedule_id, next_due_at=None)
            return [], False
        more = len(later) == MAX_BATCH + keep and len(due_ticks) == len(ticks)
        if more:  # a long outage: the oldest batch cannot hold the ticks the policy runs
            due_ticks = due_ticks[:MAX_BATCH]
            plan = plan_ticks(due_ticks, now, CatchUp(CatchUpPolicy.SKIP, 1, catch_up.grace_s),
                              lambda t: self.fire_at(row, t))
            cursor: datetime | None = ticks[MAX_BATCH]
        else:
            plan = plan_ticks(due_ticks, now, catch_up, lambda t: self.fire_at(row, t))
            cursor = ticks[len(due_ticks)] if len(due_ticks) < len(ticks) else next_fire(cron, due_ticks[-1])
        if cursor is not None and row.end_at is not None and cursor > row.end_at:
            cursor = None
        outbox = Outbox(conn, now)
        srepo.insert_ticks(conn, [self._tick(row, t, now, TickOutcome.MISSED, None,
                                             "late: the catch-up policy did not run it")
                                  for t, outcome in plan if outcome == TickOutcome.MISSED])
        for tick, outcome in plan:
            if outcome != TickOutcome.MISSED:
                self._fire(conn, outbox, row, tick, outcome, now)
        srepo.update_schedule(conn, schedule_id, next_due_at=cursor)
        return outbox.flush(), more

    def _fire(self, conn: Connection, outbox: Outbox, row: ScheduleRow, due: datetime, outcome: TickOutcome,
              now: datetime) -> None:
        key = tick_key(row.id, due)
        if row.overlap == OverlapPolicy.BUFFER_ONE:  # an older buffered tick goes first
            self._release(conn, outbox, row, now)
        running, run_id = self.previous_run(conn, row, now)
        buffered = srepo.buffered_tick(conn, row.id, TickOutcome.BUFFERED) is not None
        action = overlap_action(row.overlap, running, buffered)
        previous = run_id or "(start still in flight)"
        if action == OverlapAction.SKIP:
            why = "a tick is buffered already" if buffered else f"previous run {previous} still running"
            srepo.insert_ticks(conn, [self._tick(row, due, now, TickOutcome.SKIPPED_OVERLAP, None, why)])
            return
        if action == OverlapAction.BUFFER:
            srepo.insert_ticks(conn, [self._tick(row, due, now, TickOutcome.BUFFERED, key,
                                                 f"waiting for run {previous}")])
            return
        detail = f"cancelled previous run {previous}" if action == OverlapAction.CANCEL_AND_FIRE else None
        if not srepo.insert_ticks(conn, [self._tick(row, due, now, outcome, key, detail)]):
            return  # another timer recorded this tick: it is the one that starts the run
        if action == OverlapAction.CANCEL_AND_FIRE and run_id is not None:
            outbox.add(self.names.ingress, CANCEL_RUN, CancelRun(
                run_id, f"schedule {row.name}: tick {due.isoformat()} (overlap cancel_running)").to_payload())
        self._start(outbox, row, key)

    def release_buffered(self, conn: Connection, schedule_id: str, now: datetime) -> list[Outgoing]:
        """Start the buffered tick of a schedule once its previous run has ended (even when paused:
        the tick was accepted before the pause)."""
        row = srepo.lock_schedule(conn, schedule_id)
        if row is None:
            return []
        outbox = Outbox(conn, now)
        self._release(conn, outbox, row, now)
        return outbox.flush()

    def _release(self, conn: Connection, outbox: Outbox, row: ScheduleRow, now: datetime) -> None:
        tick = srepo.buffered_tick(conn, row.id, TickOutcome.BUFFERED)
        if tick is None or tick.id is None or self.previous_run(conn, row, now)[0]:
            return
        lateness = round((now - tick.due_at).total_seconds() * 1000, 3)
        if srepo.claim_tick(conn, tick.id, TickOutcome.BUFFERED, outcome=TickOutcome.FIRED, fired_at=now,
                            lateness_ms=lateness, detail="buffered until the previous run ended", node=self.node):
            assert tick.idempotency_key is not None
            self._start(outbox, row, tick.idempotency_key)
