"""Schedule math: pure functions of (cron expression, IANA timezone, instant). No clock, no I/O.

Expressions have 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first
(second minute hour ...), or an alias: @yearly @annually @monthly @weekly @daily @midnight @hourly.
Matching is done by croniter on naive local wall-clock times; this module maps wall times to
instants with the zone's rules (zoneinfo), one constant-offset segment at a time.

DST, as Vixie cron does it:
- Expressions that fire every hour (hour field ``*``) follow elapsed time: wall times inside a
  spring-forward gap do not exist and do not fire; a repeated hour (fall-back) fires in both of
  its occurrences.
- Other expressions follow the wall clock: a wall time inside a gap fires shifted forward by the
  length of the gap (02:30 in a 02:00->03:00 gap fires at 03:30, PEP 495 ``fold=0``); a repeated
  wall time fires once, at its first occurrence.
A tick that two rules map to the same instant fires once. Zones that change their offset twice
within 6 hours are not supported (tzdata has none today).

Every search is bounded: an expression that does not fire within ``HORIZON_YEARS`` years
(``0 0 31 2 *``) is "never fires", reported at definition time by :func:`check_fires`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from protocol.errors import DefinitionError

HORIZON_YEARS = 8
HORIZON = timedelta(days=366 * HORIZON_YEARS)
MAX_EXPRESSION_LEN = 200
ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_SPAN = timedelta(hours=6)  # longer than any offset change; shorter than the gap between two of them
_SECOND = timedelta(seconds=1)
_RANDOM = re.compile(r"(^|,)R($|[(,/])", re.IGNORECASE)

CATCH_UP_POLICIES = ("skip", "latest", "all")
OVERLAP_POLICIES = ("allow", "skip", "buffer_one", "cancel_running")
MAX_CATCH_UP_LIMIT = 1000

# Ledger outcomes of a tick.
FIRED = "fired"  # a start was sent (on time)
CAUGHT_UP = "caught_up"  # a late tick started by the catch-up policy
MISSED = "missed"  # a late tick the catch-up policy did not run
SKIPPED_OVERLAP = "skipped_overlap"  # the previous run was still going (overlap skip / buffer full)
BUFFERED = "buffered"  # waiting for the previous run to end (overlap buffer_one); becomes fired
MANUAL = "manual"  # `miniflow schedules trigger`
STARTED_OUTCOMES = frozenset({FIRED, CAUGHT_UP, MANUAL})


@dataclass(frozen=True)
class Cron:
    """A validated expression in a timezone. Build it with :func:`parse_cron`."""

    expression: str  # as written (an alias stays an alias)
    timezone: str
    fields: str  # the expression croniter reads (aliases expanded)
    has_seconds: bool
    every_hour: bool

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # zoneinfo caches instances


def load_timezone(name: str, source: str = "<schedule>") -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise DefinitionError(source, "'timezone' must be an IANA timezone name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise DefinitionError(source, f"unknown timezone {name!r} (use an IANA name such as "
                              "Europe/Berlin or UTC)") from None


def parse_cron(expression: str, timezone: str = "UTC", source: str = "<schedule>") -> Cron:
    """Validate the syntax of an expression and its timezone (see :func:`check_fires` for the rest)."""
    if not isinstance(expression, str) or not expression.strip():
        raise DefinitionError(source, "'cron' must be a cron expression such as '*/5 * * * *'")
    if len(expression) > MAX_EXPRESSION_LEN:
        raise DefinitionError(source, f"cron expression is longer than {MAX_EXPRESSION_LEN} characters")
    load_timezone(timezone, source)
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise DefinitionError(source, f"unknown cron alias {text!r} (known: {', '.join(ALIASES)})")
        text = ALIASES[text.lower()]
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise DefinitionError(source, f"cron expression {expression!r} has {len(fields)} fields: use 5 "
                              "(minute hour day month weekday) or 6 (second first)")
    if any(_RANDOM.search(f) for f in fields):
        raise DefinitionError(source, f"cron expression {expression!r}: random values (R) are not supported: "
                              "every timer must compute the same ticks")
    seconds = len(fields) == 6
    try:
        expanded, _ = croniter.expand(text, second_at_beginning=seconds)
    except (CroniterError, ValueError, TypeError, IndexError) as exc:
        raise DefinitionError(source, f"invalid cron expression {expression!r}: {exc}") from None
    hours = expanded[1]
    every_hour = hours == ["*"] or set(hours) == set(range(24))
    return Cron(expression, timezone, text, seconds, every_hour)


# -- wall times and offsets -----------------------------------------------------------------------
def _floor(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("schedule math needs aware datetimes")
    return instant.astimezone(UTC).replace(microsecond=0)


def _offset(tz: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def _wall(instant: datetime, offset: timedelta) -> datetime:
    return (instant + offset).replace(tzinfo=None)


def _instant(wall: datetime, offset: timedelta) -> datetime:
    return (wall - offset).replace(tzinfo=UTC)


def _next_wall(cron: Cron, wall: datetime) -> datetime | None:
    """The first matching wall time strictly after ``wall`` (naive), None within the horizon."""
    try:
        found = croniter(cron.fields, wall, second_at_beginning=cron.has_seconds,
                         max_years_between_matches=HORIZON_YEARS).get_next(datetime)
    except CroniterBadDateError:
        return None
    except OverflowError:  # past year 9999
        return None
    assert isinstance(found, datetime)
    return found


def _transition(tz: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """The first instant in (lo, hi] whose offset differs from lo's (they differ at hi)."""
    before = _offset(tz, lo)
    while hi - lo > _SECOND:
        mid = lo + timedelta(seconds=(hi - lo) // _SECOND // 2)
        if _offset(tz, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


def _second_occurrence(tz: ZoneInfo, wall: datetime, offset: timedelta) -> timedelta | None:
    """For a wall time read with ``offset``: the offset of its first occurrence when it repeats."""
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    return first if first is not None and first != offset else None


def _next_in_segment(cron: Cron, lo: datetime, hi: datetime, offset: timedelta) -> datetime | None:
    """The first tick with instant in (lo, hi) where the zone's offset is constant."""
    tz = cron.tz
    wall, end = _wall(lo, offset), _wall(hi, offset)
    while True:
        found = _next_wall(cron, wall)
        if found is None or found >= end:
            return None
        first = None if cron.every_hour else _second_occurrence(tz, found, offset)
        if first is None:
            return _instant(found, offset)
        # A repeated wall time: it fired at its first occurrence. Skip to the end of the repeat.
        instant = _instant(found, offset)
        change = _transition(tz, instant - (first - offset), instant)
        wall = _wall(change, first) - _SECOND


def _pending_gap_tick(cron: Cron, start: datetime) -> datetime | None:
    """A gap wall time of a spring-forward just before ``start``, shifted to after ``start``."""
    if cron.every_hour:
        return None
    tz = cron.tz
    lo = start - _SPAN
    old, new = _offset(tz, lo), _offset(tz, start)
    if new <= old:
        return None
    change = _transition(tz, lo, start)
    found = _next_wall(cron, _wall(start, old))
    if found is not None and found < _wall(change, new):
        return _instant(found, old)
    return None


def next_fire(cron: Cron, after: datetime, *, horizon: timedelta = HORIZON) -> datetime | None:
    """The first tick strictly after ``after`` (aware), in UTC; None if none within the horizon."""
    tz = cron.tz
    start = _floor(after)
    limit = start + horizon
    best = _pending_gap_tick(cron, start)
    t = start
    while t < limit:
        e = t + _SPAN
        off_t, off_e = _offset(tz, t), _offset(tz, e)
        if off_t == off_e:
            found = _next_in_segment(cron, t, e + _SECOND, off_t)
            if found is not None:
                return min(found, best) if best is not None else found
            if best is not None:
                return best
            wall = _next_wall(cron, _wall(e, off_t))
            if wall is None:
                return None
            t = max(e, _instant(wall, off_t) - _SPAN)
            continue
        change = _transition(tz, t, e)
        found = _next_in_segment(cron, t, change, off_t)
        if found is not None:
            return min(found, best) if best is not None else found
        candidates = [best] if best is not None else []
        gap = off_e - off_t
        if gap > timedelta(0) and not cron.every_hour:
            wall = _next_wall(cron, _wall(change, off_t) - _SECOND)
            if wall is not None and wall < _wall(change, off_e):
                candidates.append(_instant(wall, off_t))
        after_change = _next_in_segment(cron, change - _SECOND, max(e, change + gap) + _SECOND, off_e)
        if after_change is not None:
            candidates.append(after_change)
        if candidates:
            return min(candidates)
        t = e
    return best if best is not None and best < limit else None


def next_fires(cron: Cron, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` ticks after ``after``."""
    ticks: list[datetime] = []
    current: datetime | None = after
    while current is not None and len(ticks) < count:
        current = next_fire(cron, current)
        if current is not None:
            ticks.append(current)
    return ticks


def ticks_between(cron: Cron, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """Ticks in (after, until], oldest first, at most ``limit`` of them (the caller checks for more)."""
    ticks: list[datetime] = []
    current = after
    while len(ticks) < limit:
        found = next_fire(cron, current, horizon=max(until - current, timedelta(0)) + _SPAN)
        if found is None or found > until:
            break
        ticks.append(found)
        current = found
    return ticks


# -- definition-time checks -----------------------------------------------------------------------
def first_fire(cron: Cron, now: datetime, start: datetime | None = None) -> datetime | None:
    """The first tick strictly after ``now``, or at or after ``start`` when that is later."""
    if start is not None and start > now:
        return next_fire(cron, start - _SECOND if start.microsecond == 0 else start)
    return next_fire(cron, now)


def check_fires(cron: Cron, now: datetime, start: datetime | None = None, end: datetime | None = None,
                source: str = "<schedule>") -> datetime:
    """The first tick of a schedule; DefinitionError when there is none (never a hang)."""
    if start is not None and end is not None and end <= start:
        raise DefinitionError(source, f"the window ends ({end.isoformat()}) before it starts "
                              f"({start.isoformat()})")
    if end is not None and end <= now:
        raise DefinitionError(source, f"the window ended at {end.isoformat()}: the schedule would never fire")
    first = first_fire(cron, now, start)
    if first is None:
        raise DefinitionError(source, f"cron expression {cron.expression!r} never fires (no match within "
                              f"{HORIZON_YEARS} years in {cron.timezone})")
    if end is not None and first > end:
        raise DefinitionError(source, f"cron expression {cron.expression!r} never fires within its window "
                              f"(the first tick, {first.isoformat()}, is after its end {end.isoformat()})")
    return first


# -- jitter, catch-up and overlap decisions -------------------------------------------------------
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

    policy: str = "skip"  # skip | latest | all
    limit: int = 1  # with "all": at most this many late ticks run (the most recent ones)
    grace_s: float = 60.0  # a tick up to this late still counts as on time


def plan_ticks(ticks: Sequence[datetime], now: datetime, catch_up: CatchUp,
               fire_at: Callable[[datetime], datetime]) -> list[tuple[datetime, str]]:
    """Outcome of each due tick (oldest first): FIRED (on time), CAUGHT_UP or MISSED (late).

    ``ticks`` are the due ticks (fire time <= now), all of them: the caller bounds the list.
    """
    late = [t for t in ticks if (now - fire_at(t)).total_seconds() > catch_up.grace_s]
    on_time = len(ticks) - len(late)
    if catch_up.policy == "all":
        keep = catch_up.limit
    elif catch_up.policy == "latest":
        keep = 0 if on_time else 1
    else:
        keep = 0
    run_late = set(late[len(late) - keep:]) if keep else set()
    plan: list[tuple[datetime, str]] = []
    for tick in ticks:
        if tick in run_late:
            plan.append((tick, CAUGHT_UP))
        elif tick in late:
            plan.append((tick, MISSED))
        else:
            plan.append((tick, FIRED))
    return plan


OVERLAP_FIRE = "fire"
OVERLAP_SKIP = "skip"
OVERLAP_BUFFER = "buffer"
OVERLAP_CANCEL = "cancel_and_fire"


def overlap_action(policy: str, previous_running: bool, buffered_pending: bool) -> str:
    """What a tick that is due to start does, given whether the schedule's previous run is going."""
    if not previous_running or policy == "allow":
        return OVERLAP_FIRE
    if policy == "skip":
        return OVERLAP_SKIP
    if policy == "buffer_one":
        return OVERLAP_SKIP if buffered_pending else OVERLAP_BUFFER
    if policy == "cancel_running":
        return OVERLAP_CANCEL
    raise ValueError(f"unknown overlap policy {policy!r}")


def tick_key(schedule_id: str, due: datetime) -> str:
    """The idempotency key of the run a tick starts: the coordinator makes one run per key."""
    return f"schedule:{schedule_id}:{due.astimezone(UTC).isoformat()}"
