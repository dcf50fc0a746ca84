"""Cron maths: pure functions of (cron expression, IANA timezone, instant). No clock, no I/O.

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

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from miniflow.protocol.errors import DefinitionError

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
        if off_t != off_e:  # the zone changes its offset within this span
            found = _across_change(cron, t, e, off_t, off_e, best)
            if found is not None:
                return found
            t = e
            continue
        found = _next_in_segment(cron, t, e + _SECOND, off_t)
        if found is not None:
            return min(found, best) if best is not None else found
        if best is not None:
            return best
        wall = _next_wall(cron, _wall(e, off_t))
        if wall is None:
            return None
        t = max(e, _instant(wall, off_t) - _SPAN)
    return best if best is not None and best < limit else None


def _across_change(cron: Cron, t: datetime, e: datetime, off_t: timedelta, off_e: timedelta,
                   best: datetime | None) -> datetime | None:
    """The first tick in (t, e] when the offset changes from ``off_t`` to ``off_e`` within it."""
    change = _transition(cron.tz, t, e)
    found = _next_in_segment(cron, t, change, off_t)
    if found is not None:
        return min(found, best) if best is not None else found
    candidates = [best] if best is not None else []
    gap = off_e - off_t
    if gap > timedelta(0) and not cron.every_hour:  # a wall time in the gap fires shifted forward
        wall = _next_wall(cron, _wall(change, off_t) - _SECOND)
        if wall is not None and wall < _wall(change, off_e):
            candidates.append(_instant(wall, off_t))
    after_change = _next_in_segment(cron, change - _SECOND, max(e, change + gap) + _SECOND, off_e)
    if after_change is not None:
        candidates.append(after_change)
    return min(candidates) if candidates else None


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
