"""Schedules of workflows: their definition (YAML or CLI) and the timer's service.

Given a transaction and an instant, :class:`Scheduler` records what happens to each due tick in
the ledger and queues the start_workflow (and cancel_run) messages in the outbox, in the same
transaction. The ledger's UNIQUE (schedule_id, due_at) makes a tick fire once, whatever the number
of timers; the coordinator makes one run per idempotency key ``schedule:<id>:<due>``.

A workflow file may carry its schedules in an optional top-level ``schedules:`` list (see
docs/scheduling.md); :func:`load_schedules_file` reads them from the raw YAML.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from persistence import repository as repo
from persistence import schedule_repo as srepo
from protocol.errors import DefinitionError, MessageRejected
from protocol.messages import CancelRun, StartWorkflow
from protocol.names import CANCEL_RUN, START_WORKFLOW, QueueNames

from .definitions import NAME_RE, Workflow, _UniqueKeyLoader
from .schedule import (
    BUFFERED,
    CATCH_UP_POLICIES,
    FIRED,
    MANUAL,
    MAX_CATCH_UP_LIMIT,
    MISSED,
    OVERLAP_BUFFER,
    OVERLAP_CANCEL,
    OVERLAP_POLICIES,
    OVERLAP_SKIP,
    SKIPPED_OVERLAP,
    STARTED_OUTCOMES,
    CatchUp,
    check_fires,
    jitter_for,
    next_fire,
    overlap_action,
    parse_cron,
    plan_ticks,
    tick_key,
    ticks_between,
)
from .service import Outbox, Outgoing, resolve_params
from .state import RUN_TERMINAL

MAX_JITTER_S = 24 * 3600
MAX_BATCH = 1000  # ticks recorded per transaction when catching up a long outage
IN_FLIGHT_S = 60.0  # a start sent this recently whose run does not exist yet counts as running
_KEYS = {"name", "cron", "timezone", "params", "version", "start", "end", "jitter", "catch_up", "overlap",
         "priority", "paused", "description"}
_CATCH_UP_KEYS = {"policy", "limit", "grace"}


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    workflow: str
    cron: str
    timezone: str = "UTC"
    params: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    jitter_s: float = 0.0
    catch_up: CatchUp = CatchUp()
    overlap: str = "allow"
    priority: int = 0
    paused: bool = False


def _when(value: Any, what: str, timezone: str, source: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DefinitionError(source, f"{what} {value!r} is not an ISO 8601 time "
                                  "(e.g. 2026-01-01T00:00:00Z)") from None
    if not isinstance(value, datetime):
        raise DefinitionError(source, f"{what} must be an ISO 8601 time (e.g. 2026-01-01T00:00:00Z)")
    if value.tzinfo is None:  # a local time of the schedule's timezone
        from zoneinfo import ZoneInfo

        value = value.replace(tzinfo=ZoneInfo(timezone))
    return value.astimezone(UTC)


def _parse_catch_up(raw: Any, source: str) -> CatchUp:
    if raw is None:
        return CatchUp()
    if isinstance(raw, str):
        raw = {"policy": raw}
    if not isinstance(raw, dict):
        raise DefinitionError(source, "'catch_up' must be skip, latest, all or a mapping (policy, limit, grace)")
    extra = sorted(str(k) for k in set(raw) - _CATCH_UP_KEYS)
    if extra:
        raise DefinitionError(source, f"unknown catch_up key(s) {', '.join(extra)} (allowed: grace, limit, policy)")
    policy = raw.get("policy", "skip")
    if policy not in CATCH_UP_POLICIES:
        raise DefinitionError(source, f"catch_up policy {policy!r} must be one of {', '.join(CATCH_UP_POLICIES)}")
    limit = raw.get("limit", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CATCH_UP_LIMIT:
        raise DefinitionError(source, f"catch_up limit must be a whole number from 1 to {MAX_CATCH_UP_LIMIT}")
    grace = raw.get("grace", 60)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= 7 * 86400:
        raise DefinitionError(source, "catch_up grace must be seconds from 0 to 604800")
    return CatchUp(policy, limit, float(grace))


def parse_schedule(data: Any, workflow: str, source: str = "<schedule>") -> ScheduleSpec:
    """Validate one schedule given as plain data (a YAML item or the CLI's options)."""
    if not isinstance(data, dict):
        raise DefinitionError(source, "a schedule must be a mapping with 'name' and 'cron'")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(source, "schedule 'name' must be 1-128 characters of letters, digits, '_', '.', '-'")
    where = f"{source}: schedule {name!r}"
    extra = sorted(str(k) for k in set(data) - _KEYS)
    if extra:
        raise DefinitionError(where, f"unknown key(s) {', '.join(extra)} (allowed: {', '.join(sorted(_KEYS))})")
    timezone = data.get("timezone") or "UTC"
    cron = parse_cron(data.get("cron"), timezone, where)  # type: ignore[arg-type]
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise DefinitionError(where, "'params' must be a mapping")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise DefinitionError(where, "'version' must be a whole number >= 1 (or left out: the latest)")
    start = _when(data.get("start"), "'start'", timezone, where)
    end = _when(data.get("end"), "'end'", timezone, where)
    if start is not None and end is not None and end <= start:
        raise DefinitionError(where, f"the window ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    jitter = data.get("jitter", 0)
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or jitter != jitter:
        raise DefinitionError(where, "'jitter' must be a number of seconds")
    if jitter < 0:
        raise DefinitionError(where, "'jitter' must not be negative")
    if jitter > MAX_JITTER_S:
        raise DefinitionError(where, f"'jitter' must be at most {MAX_JITTER_S} seconds")
    overlap = data.get("overlap", "allow")
    if overlap not in OVERLAP_POLICIES:
        raise DefinitionError(where, f"'overlap' {overlap!r} must be one of {', '.join(OVERLAP_POLICIES)}")
    priority = data.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise DefinitionError(where, "'priority' must be a whole number from 0 to 9")
    paused = data.get("paused", False)
    if not isinstance(paused, bool):
        raise DefinitionError(where, "'paused' must be true or false")
    return ScheduleSpec(name=name, workflow=workflow, cron=cron.expression, timezone=timezone, params=params,
                        version=version, start=start, end=end, jitter_s=float(jitter),
                        catch_up=_parse_catch_up(data.get("catch_up"), where), overlap=overlap,
                        priority=priority, paused=paused)


def load_schedules_file(path: str | Path) -> list[ScheduleSpec]:
    """The ``schedules:`` of a workflow file (its other keys are the workflow's business)."""
    source = str(path)
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except OSError as exc:
        raise DefinitionError(source, f"cannot read file: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DefinitionError(source, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise DefinitionError(source, "a workflow file is a mapping with 'name', 'steps' and optional 'schedules'")
    raw = data.get("schedules")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DefinitionError(source, "'schedules' must be a list of schedules")
    specs = [parse_schedule(item, data["name"], source) for item in raw]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DefinitionError(source, f"duplicate schedule name(s) {', '.join(duplicates)}")
    return specs


class Scheduler:
    """Schedules and their ticks, inside transactions the caller owns. ``now`` is always a parameter."""

    def __init__(self, names: QueueNames, *, node: str | None = None) -> None:
        self.names = names
        self.node = node

    # -- definitions ------------------------------------------------------------------------------
    def add(self, conn: Any, spec: ScheduleSpec, now: datetime, *, replace: bool = False,
            source: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store a schedule (or replace one of the same name); returns (row, created)."""
        where = f"schedule {spec.name!r}"
        found = repo.get_definition(conn, spec.workflow, spec.version)
        if found is None:
            what = f"workflow {spec.workflow!r}" + (f" version {spec.version}" if spec.version else "")
            raise DefinitionError(where, f"{what} is not deployed (run `miniflow deploy FILE` first)")
        try:
            resolve_params(Workflow.from_spec(found[1], found[0]), spec.params)
        except MessageRejected as exc:
            raise DefinitionError(where, exc.detail) from None
        cron = parse_cron(spec.cron, spec.timezone, where)
        first = check_fires(cron, now, spec.start, spec.end, where)
        values = {
            "name": spec.name, "workflow": spec.workflow, "version": spec.version, "cron": spec.cron,
            "timezone": spec.timezone, "params": spec.params, "start_at": spec.start, "end_at": spec.end,
            "jitter_s": spec.jitter_s, "catch_up": spec.catch_up.policy, "catch_up_limit": spec.catch_up.limit,
            "catch_up_grace_s": spec.catch_up.grace_s, "overlap": spec.overlap, "priority": spec.priority,
            "paused": spec.paused, "next_due_at": first, "source": source, "updated_at": now,
        }
        existing = srepo.get_schedule(conn, spec.name)
        if existing is not None:
            if not replace:
                raise DefinitionError(where, "already exists (use --replace to change it)")
            srepo.update_schedule(conn, existing["id"], **values)
            row = srepo.get_schedule(conn, spec.name)
            assert row is not None
            return row, False
        if not srepo.insert_schedule(conn, {"id": str(uuid.uuid4()), "created_at": now, **values}):
            raise DefinitionError(where, "already exists (created concurrently)")
        row = srepo.get_schedule(conn, spec.name)
        assert row is not None
        return row, True

    def _named(self, conn: Any, name: str) -> dict[str, Any]:
        row = srepo.get_schedule(conn, name)
        if row is None:
            raise DefinitionError(f"schedule {name!r}", "does not exist (see `miniflow schedules list`)")
        locked = srepo.lock_schedule(conn, row["id"])
        assert locked is not None
        return locked

    def pause(self, conn: Any, name: str, now: datetime) -> bool:
        row = self._named(conn, name)
        srepo.update_schedule(conn, row["id"], paused=True, updated_at=now)
        return not row["paused"]

    def resume(self, conn: Any, name: str, now: datetime) -> datetime | None:
        """Resume from now on: ticks that fell while paused are neither fired nor recorded."""
        row = self._named(conn, name)
        cron = parse_cron(row["cron"], row["timezone"], f"schedule {name!r}")
        begin = max(now, row["start_at"] - timedelta(seconds=1)) if row["start_at"] else now
        due = next_fire(cron, begin)
        if due is not None and row["end_at"] is not None and due > row["end_at"]:
            due = None
        srepo.update_schedule(conn, row["id"], paused=False, next_due_at=due, updated_at=now)
        return due

    def delete(self, conn: Any, name: str) -> None:
        srepo.delete_schedule(conn, self._named(conn, name)["id"])

    def trigger(self, conn: Any, name: str, now: datetime) -> tuple[str, list[Outgoing]]:
        """Fire once now, outside the cron (ledger kind 'manual'); overlap policy not applied."""
        row = self._named(conn, name)
        key = tick_key(row["id"], now)
        outbox = Outbox(conn, now)
        if not srepo.insert_ticks(conn, [self._tick(row, now, now, MANUAL, key, "triggered by hand", "manual")]):
            raise DefinitionError(f"schedule {name!r}", "a tick at this instant exists already; try again")
        self._start(outbox, row, key)
        return key, outbox.flush()

    # -- the timer --------------------------------------------------------------------------------
    def _tick(self, row: dict[str, Any], due: datetime, now: datetime, outcome: str, key: str | None,
              detail: str | None = None, kind: str = "cron") -> dict[str, Any]:
        return {"schedule_id": row["id"], "due_at": due, "kind": kind, "outcome": outcome, "idempotency_key": key,
                "fired_at": now, "lateness_ms": round((now - due).total_seconds() * 1000, 3), "detail": detail,
                "node": self.node}

    def _start(self, outbox: Outbox, row: dict[str, Any], key: str) -> None:
        start = StartWorkflow(workflow=row["workflow"], version=row["version"], params=dict(row["params"] or {}),
                              idempotency_key=key, priority=row["priority"])
        outbox.add(self.names.ingress, START_WORKFLOW, start.to_payload())

    def previous_run(self, conn: Any, row: dict[str, Any], now: datetime) -> tuple[bool, str | None]:
        """(still running, its run id) of the last run this schedule started."""
        last = srepo.last_started(conn, row["id"], sorted(STARTED_OUTCOMES))
        if last is None or not last["idempotency_key"]:
            return False, None
        run_id = repo.run_id_for_key(conn, last["idempotency_key"])
        if run_id is None:  # sent, not created yet (or rejected long ago)
            return (now - last["fired_at"]).total_seconds() < IN_FLIGHT_S, None
        run = repo.get_run(conn, run_id)
        return (run is not None and run["status"] not in RUN_TERMINAL), run_id

    def fire_at(self, row: dict[str, Any], due: datetime) -> datetime:
        return due + jitter_for(row["id"], due, row["jitter_s"])

    def process(self, conn: Any, schedule_id: str, now: datetime) -> tuple[list[Outgoing], bool]:
        """Record every due tick of one schedule and queue its starts; (messages, more to do)."""
        row = srepo.lock_schedule(conn, schedule_id)
        if row is None or row["paused"] or row["next_due_at"] is None:
            return [], False
        first = row["next_due_at"]
        if self.fire_at(row, first) > now:
            return [], False
        cron = parse_cron(row["cron"], row["timezone"], f"schedule {row['name']!r}")
        catch_up = CatchUp(row["catch_up"], row["catch_up_limit"], row["catch_up_grace_s"])
        keep = catch_up.limit if catch_up.policy == "all" else 1 if catch_up.policy == "latest" else 0
        later = ticks_between(cron, first, now, MAX_BATCH + keep)
        ticks = [first, *later]
        end = row["end_at"]
        due_ticks: list[datetime] = []
        for tick in ticks:
            if (end is not None and tick > end) or self.fire_at(row, tick) > now:
                break
            due_ticks.append(tick)
        if not due_ticks:  # the window ended
            srepo.update_schedule(conn, schedule_id, next_due_at=None)
            return [], False
        more = len(later) == MAX_BATCH + keep and len(due_ticks) == len(ticks)
        if more:  # a long outage: the oldest batch cannot hold the ticks the policy runs
            due_ticks = due_ticks[:MAX_BATCH]
            plan = plan_ticks(due_ticks, now, CatchUp("skip", 1, catch_up.grace_s), lambda t: self.fire_at(row, t))
            cursor: datetime | None = ticks[MAX_BATCH]
        else:
            plan = plan_ticks(due_ticks, now, catch_up, lambda t: self.fire_at(row, t))
            cursor = ticks[len(due_ticks)] if len(due_ticks) < len(ticks) else next_fire(cron, due_ticks[-1])
        if cursor is not None and end is not None and cursor > end:
            cursor = None
        outbox = Outbox(conn, now)
        missed = [self._tick(row, t, now, MISSED, None, "late: the catch-up policy did not run it")
                  for t, outcome in plan if outcome == MISSED]
        srepo.insert_ticks(conn, missed)
        for tick, outcome in plan:
            if outcome != MISSED:
                self._fire(conn, outbox, row, tick, outcome, now)
        srepo.update_schedule(conn, schedule_id, next_due_at=cursor)
        return outbox.flush(), more

    def _fire(self, conn: Any, outbox: Outbox, row: dict[str, Any], due: datetime, outcome: str,
              now: datetime) -> None:
        key = tick_key(row["id"], due)
        if row["overlap"] == "buffer_one":  # an older buffered tick goes first
            self._release(conn, outbox, row, now)
        running, run_id = self.previous_run(conn, row, now)
        buffered = srepo.buffered_tick(conn, row["id"], BUFFERED) is not None
        action = overlap_action(row["overlap"], running, buffered)
        previous = run_id or "(start still in flight)"
        if action == OVERLAP_SKIP:
            why = "a tick is buffered already" if buffered else f"previous run {previous} still running"
            srepo.insert_ticks(conn, [self._tick(row, due, now, SKIPPED_OVERLAP, None, why)])
            return
        if action == OVERLAP_BUFFER:
            srepo.insert_ticks(conn, [self._tick(row, due, now, BUFFERED, key, f"waiting for run {previous}")])
            return
        detail: str | None = None
        if action == OVERLAP_CANCEL:
            detail = f"cancelled previous run {previous}"
        if not srepo.insert_ticks(conn, [self._tick(row, due, now, outcome, key, detail)]):
            return  # another timer recorded this tick: it is the one that starts the run
        if action == OVERLAP_CANCEL and run_id is not None:
            outbox.add(self.names.ingress, CANCEL_RUN, CancelRun(
                run_id, f"schedule {row['name']}: tick {due.isoformat()} (overlap cancel_running)").to_payload())
        self._start(outbox, row, key)

    def release_buffered(self, conn: Any, schedule_id: str, now: datetime) -> list[Outgoing]:
        """Start the buffered tick of a schedule once its previous run has ended (even when paused:
        the tick was accepted before the pause)."""
        row = srepo.lock_schedule(conn, schedule_id)
        if row is None:
            return []
        outbox = Outbox(conn, now)
        self._release(conn, outbox, row, now)
        return outbox.flush()

    def _release(self, conn: Any, outbox: Outbox, row: dict[str, Any], now: datetime) -> None:
        tick = srepo.buffered_tick(conn, row["id"], BUFFERED)
        if tick is None or self.previous_run(conn, row, now)[0]:
            return
        lateness = round((now - tick["due_at"]).total_seconds() * 1000, 3)
        if srepo.claim_tick(conn, tick["id"], BUFFERED, outcome=FIRED, fired_at=now, lateness_ms=lateness,
                            detail="buffered until the previous run ended", node=self.node):
            self._start(outbox, row, tick["idempotency_key"])
