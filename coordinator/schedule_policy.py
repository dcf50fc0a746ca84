"""What happens to each due tick of a schedule: pure decisions, no clock, database or broker.

- jitter: a deterministic delay per (schedule, tick), the same on every timer;
- catch-up: which late ticks still start a run (skip, latest, all up to a limit);
- overlap: what a tick does while the schedule's previous run is still going (allow, skip,
  buffer one, cancel the running one);
- the ledger outcome of every tick, and the idempotency key of the run a tick starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from miniflow.protocol.errors import DefinitionError

MAX_CATCH_UP_LIMIT = 1000


class TickOutcome(StrEnum):
    """The ledger outcome of a tick."""

    FIRED = "fired"  # a start was sent (on time)
    CAUGHT_UP = "caught_up"  # a late tick started by the catch-up policy
    MISSED = "missed"  # a late tick the catch-up policy did not run
    SKIPPED_OVERLAP = "skipped_overlap"  # the previous run was still going (overlap skip / buffer full)
    BUFFERED = "buffered"  # waiting for the previous run to end (overlap buffer_one); becomes fired
    MANUAL = "manual"  # `miniflow schedules trigger`


STARTED_OUTCOMES = frozenset({TickOutcome.FIRED, TickOutcome.CAUGHT_UP, TickOutcome.MANUAL})


class CatchUpPolicy(StrEnum):
    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


class OverlapPolicy(StrEnum):
    ALLOW = "allow"
    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    CANCEL_RUNNING = "cancel_running"


class OverlapAction(StrEnum):
    """What a due tick does, given the overlap policy and the previous run."""

    FIRE = "fire"
    SKIP = "skip"
    BUFFER = "buffer"
    CANCEL_AND_FIRE = "cancel_and_fire"


CATCH_UP_POLICIES = tuple(CatchUpPolicy)
OVERLAP_POLICIES = tuple(OverlapPolicy)


def jitter_for(schedule_id: str, due: datetime, jitter_s: float) -> timedelta:
    """A deterministic delay in [0, jitter_s) for one tick: every timer computes the same one."""
    if jitter_s <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}|{due.astimezone(UTC).isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(milliseconds=int(fraction * jitter_s * 1000))


@dataclass(frozen=True)
class CatchUp:
    """What to do with ticks found late (more than ``grace_s`` after they were due to fire)."""

    policy: str = CatchUpPolicy.SKIP
    limit: int = 1  # with "all": at most this many late ticks run (the most recent ones)
    grace_s: float = 60.0  # a tick up to this late still counts as on time


def plan_ticks(ticks: Sequence[datetime], now: datetime, catch_up: CatchUp,
               fire_at: Callable[[datetime], datetime]) -> list[tuple[datetime, TickOutcome]]:
    """Outcome of each due tick (oldest first): FIRED (on time), CAUGHT_UP or MISSED (late).

    ``ticks`` are the due ticks (fire time <= now), all of them: the caller bounds the list.
    """
    late = [t for t in ticks if (now - fire_at(t)).total_seconds() > catch_up.grace_s]
    on_time = len(ticks) - len(late)
    if catch_up.policy == CatchUpPolicy.ALL:
        keep = catch_up.limit
    elif catch_up.policy == CatchUpPolicy.LATEST:
        keep = 0 if on_time else 1
    else:
        keep = 0
    run_late = set(late[max(0, len(late) - keep):]) if keep else set()
    plan: list[tuple[datetime, TickOutcome]] = []
    for tick in ticks:
        if tick in run_late:
            plan.append((tick, TickOutcome.CAUGHT_UP))
        elif tick in late:
            plan.append((tick, TickOutcome.MISSED))
        else:
            plan.append((tick, TickOutcome.FIRED))
    return plan


def overlap_action(policy: str, previous_running: bool, buffered_pending: bool) -> OverlapAction:
    """What a tick that is due to start does, given whether the schedule's previous run is going."""
    if not previous_running or policy == OverlapPolicy.ALLOW:
        return OverlapAction.FIRE
    if policy == OverlapPolicy.SKIP:
        return OverlapAction.SKIP
    if policy == OverlapPolicy.BUFFER_ONE:
        return OverlapAction.SKIP if buffered_pending else OverlapAction.BUFFER
    if policy == OverlapPolicy.CANCEL_RUNNING:
        return OverlapAction.CANCEL_AND_FIRE
    raise DefinitionError("schedule", f"unknown overlap policy {policy!r}")


def tick_key(schedule_id: str, due: datetime) -> str:
    """The idempotency key of the run a tick starts: the coordinator makes one run per key."""
    return f"schedule:{schedule_id}:{due.astimezone(UTC).isoformat()}"
