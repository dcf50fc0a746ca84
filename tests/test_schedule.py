"""coordinator/cron.py and schedule_policy.py: cron math as a pure function of (expression, timezone, instant)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from miniflow.coordinator.cron import check_fires, next_fire, next_fires, parse_cron, ticks_between
from miniflow.coordinator.schedule_policy import (
    CatchUp,
    OverlapAction,
    TickOutcome,
    jitter_for,
    overlap_action,
    plan_ticks,
    tick_key,
)
from miniflow.coordinator.schedule_spec import parse_schedule
from miniflow.protocol.errors import DefinitionError


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(ticks: list[datetime], tz: str) -> list[str]:
    cron = parse_cron("* * * * *", tz)
    return [t.astimezone(cron.tz).strftime("%m-%d %H:%M:%S%z") for t in ticks]


# -- DST: Europe/Berlin (02:00 -> 03:00 on 2026-03-29, 03:00 -> 02:00 on 2026-10-25) ----------------
def test_a_daily_time_inside_the_spring_gap_fires_shifted_by_the_gap_in_berlin():
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    ticks = next_fires(cron, utc(2026, 3, 27), 4)
    assert local(ticks, "Europe/Berlin") == ["03-27 02:30:00+0100", "03-28 02:30:00+0100",
                                             "03-29 03:30:00+0200", "03-30 02:30:00+0200"]


def test_an_every_hour_expression_skips_the_nonexistent_hour_in_berlin():
    cron = parse_cron("*/30 * * * *", "Europe/Berlin")
    ticks = next_fires(cron, utc(2026, 3, 29, 0, 0), 3)
    assert local(ticks, "Europe/Berlin") == ["03-29 01:30:00+0100", "03-29 03:00:00+0200", "03-29 03:30:00+0200"]
    assert ticks[1] - ticks[0] == timedelta(minutes=30)


def test_a_daily_time_in_the_repeated_hour_fires_once_at_its_first_occurrence_in_berlin():
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    ticks = next_fires(cron, utc(2026, 10, 24, 12), 2)
    assert local(ticks, "Europe/Berlin") == ["10-25 02:30:00+0200", "10-26 02:30:00+0100"]


def test_an_every_hour_expression_fires_in_both_occurrences_of_the_repeated_hour_in_berlin():
    cron = parse_cron("*/30 * * * *", "Europe/Berlin")
    ticks = next_fires(cron, utc(2026, 10, 24, 23, 50), 5)
    assert local(ticks, "Europe/Berlin") == ["10-25 02:00:00+0200", "10-25 02:30:00+0200", "10-25 02:00:00+0100",
                                             "10-25 02:30:00+0100", "10-25 03:00:00+0100"]
    assert all(b - a == timedelta(minutes=30) for a, b in zip(ticks, ticks[1:], strict=False))


def test_a_fixed_hour_with_several_minutes_fires_each_once_across_the_fall_back():
    cron = parse_cron("*/30 2 * * *", "Europe/Berlin")
    ticks = next_fires(cron, utc(2026, 10, 24, 23, 50), 3)
    assert local(ticks, "Europe/Berlin") == ["10-25 02:00:00+0200", "10-25 02:30:00+0200", "10-26 02:00:00+0100"]


# -- DST: America/New_York (2026-03-08 and 2026-11-01) ---------------------------------------------
def test_new_york_spring_forward_shifts_a_2_30_job_to_3_30():
    ticks = next_fires(parse_cron("30 2 * * *", "America/New_York"), utc(2026, 3, 7), 3)
    assert ticks == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]


def test_new_york_fall_back_fires_a_1_30_job_once():
    ticks = next_fires(parse_cron("30 1 * * *", "America/New_York"), utc(2026, 10, 31), 3)
    assert ticks == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_an_hourly_job_fires_every_elapsed_hour_through_both_new_york_transitions():
    cron = parse_cron("@hourly", "America/New_York")
    for start in (utc(2026, 3, 8, 4), utc(2026, 11, 1, 3)):
        ticks = next_fires(cron, start, 6)
        assert all(b - a == timedelta(hours=1) for a, b in zip(ticks, ticks[1:], strict=False)), ticks


# -- DST: Australia/Lord_Howe (a 30-minute shift) --------------------------------------------------
def test_lord_howe_half_hour_spring_gap_shifts_by_thirty_minutes():
    ticks = next_fires(parse_cron("15 2 * * *", "Australia/Lord_Howe"), utc(2026, 10, 2), 3)
    assert local(ticks, "Australia/Lord_Howe") == ["10-03 02:15:00+1030", "10-04 02:45:00+1100",
                                                   "10-05 02:15:00+1100"]


def test_lord_howe_every_hour_expression_skips_the_half_hour_gap():
    ticks = next_fires(parse_cron("*/20 * * * *", "Australia/Lord_Howe"), utc(2026, 10, 3, 15, 0), 3)
    assert local(ticks, "Australia/Lord_Howe") == ["10-04 01:40:00+1030", "10-04 02:40:00+1100",
                                                   "10-04 03:00:00+1100"]


def test_lord_howe_repeated_half_hour_fires_a_fixed_time_once_and_a_wildcard_twice():
    once = next_fires(parse_cron("45 1 * * *", "Australia/Lord_Howe"), utc(2026, 4, 4), 2)
    assert local(once, "Australia/Lord_Howe") == ["04-05 01:45:00+1100", "04-06 01:45:00+1030"]
    both = next_fires(parse_cron("*/15 * * * *", "Australia/Lord_Howe"), utc(2026, 4, 4, 14, 20), 4)
    assert local(both, "Australia/Lord_Howe") == ["04-05 01:30:00+1100", "04-05 01:45:00+1100",
                                                  "04-05 01:30:00+1030", "04-05 01:45:00+1030"]


def test_a_gap_tick_is_still_due_when_asked_just_after_the_transition():
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    assert next_fire(cron, utc(2026, 3, 29, 1, 10)) == utc(2026, 3, 29, 1, 30)


# -- syntax, aliases, seconds ------------------------------------------------------------------------
@pytest.mark.parametrize("alias,expected", [
    ("@hourly", utc(2026, 1, 1, 1)), ("@daily", utc(2026, 1, 2)), ("@midnight", utc(2026, 1, 2)),
    ("@weekly", utc(2026, 1, 4)), ("@monthly", utc(2026, 2, 1)), ("@yearly", utc(2027, 1, 1)),
    ("@annually", utc(2027, 1, 1)),
])
def test_aliases_expand_to_their_cron_expressions(alias, expected):
    assert next_fire(parse_cron(alias, "UTC"), utc(2026, 1, 1, 0, 0, 1)) == expected


def test_six_fields_put_seconds_first():
    ticks = next_fires(parse_cron("*/15 * * * * *", "UTC"), utc(2026, 1, 1), 3)
    assert ticks == [utc(2026, 1, 1, 0, 0, 15), utc(2026, 1, 1, 0, 0, 30), utc(2026, 1, 1, 0, 0, 45)]
    assert next_fire(parse_cron("30 0 12 * * *", "UTC"), utc(2026, 1, 1)) == utc(2026, 1, 1, 12, 0, 30)


def test_next_fire_is_strictly_after_the_instant_even_with_microseconds():
    cron = parse_cron("* * * * * *", "UTC")
    assert next_fire(cron, utc(2026, 1, 1, 0, 0, 5)) == utc(2026, 1, 1, 0, 0, 6)
    assert next_fire(cron, utc(2026, 1, 1, 0, 0, 5).replace(microsecond=400)) == utc(2026, 1, 1, 0, 0, 6)


@pytest.mark.parametrize("expression,problem", [
    ("", "cron expression"), ("* * * *", "4 fields"), ("0 0 * * * * *", "7 fields"), ("60 * * * *", "invalid"),
    ("@reboot", "unknown cron alias"), ("R * * * *", "random"), ("H * * * *", "invalid"), ("a b c d e", "invalid"),
    ("x" * 300, "longer than"),
])
def test_invalid_expressions_are_definition_errors(expression, problem):
    with pytest.raises(DefinitionError, match=problem):
        parse_cron(expression, "UTC")


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../etc/passwd", "", "Europe/Berlin\x00"])
def test_an_unknown_timezone_is_a_definition_error(tz):
    with pytest.raises(DefinitionError, match="timezone"):
        parse_cron("* * * * *", tz)


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_an_impossible_expression_never_fires_and_is_found_quickly(expression):
    cron = parse_cron(expression, "Europe/Berlin")
    began = time.monotonic()
    with pytest.raises(DefinitionError, match="never fires"):
        check_fires(cron, utc(2026, 1, 1))
    assert time.monotonic() - began < 2


def test_a_leap_day_expression_is_possible():
    assert check_fires(parse_cron("0 0 29 2 *", "UTC"), utc(2026, 1, 1)) == utc(2028, 2, 29)


def test_windows_bound_the_first_tick_and_reject_impossible_windows():
    cron = parse_cron("0 12 * * *", "UTC")
    assert check_fires(cron, utc(2026, 1, 1), start=utc(2026, 6, 1, 12)) == utc(2026, 6, 1, 12)
    with pytest.raises(DefinitionError, match="ends .* before it starts"):
        check_fires(cron, utc(2026, 1, 1), start=utc(2026, 2, 1), end=utc(2026, 1, 15))
    with pytest.raises(DefinitionError, match="never fires within its window"):
        check_fires(cron, utc(2026, 1, 1), start=utc(2026, 2, 1, 13), end=utc(2026, 2, 1, 14))
    with pytest.raises(DefinitionError, match="window ended"):
        check_fires(cron, utc(2026, 1, 1), end=utc(2025, 1, 1))


def test_schedule_specs_reject_negative_jitter_bad_policies_and_reversed_windows():
    base = {"name": "s", "cron": "* * * * *"}
    with pytest.raises(DefinitionError, match="negative"):
        parse_schedule({**base, "jitter": -1}, "wf")
    with pytest.raises(DefinitionError, match="overlap"):
        parse_schedule({**base, "overlap": "queue"}, "wf")
    with pytest.raises(DefinitionError, match="catch_up policy"):
        parse_schedule({**base, "catch_up": "some"}, "wf")
    with pytest.raises(DefinitionError, match="before it starts"):
        parse_schedule({**base, "start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "wf")
    with pytest.raises(DefinitionError, match="unknown key"):
        parse_schedule({**base, "every": 5}, "wf")
    spec = parse_schedule({**base, "catch_up": {"policy": "all", "limit": 3, "grace": 5}, "timezone": "Europe/Berlin",
                           "start": "2026-03-01T00:00:00"}, "wf")
    assert spec.catch_up == CatchUp("all", 3, 5.0)
    assert spec.start == utc(2026, 2, 28, 23)  # a naive time is local to the schedule's timezone


def test_ticks_between_is_bounded_and_ordered():
    cron = parse_cron("* * * * * *", "UTC")
    ticks = ticks_between(cron, utc(2026, 1, 1), utc(2026, 1, 2), 100)
    assert len(ticks) == 100 and ticks[0] == utc(2026, 1, 1, 0, 0, 1) and ticks == sorted(ticks)
    assert ticks_between(cron, utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 3), 100) == [
        utc(2026, 1, 1, 0, 0, s) for s in (1, 2, 3)]
    assert ticks_between(parse_cron("0 0 31 2 *", "UTC"), utc(2026, 1, 1), utc(2030, 1, 1), 10) == []


# -- jitter, catch-up and overlap decisions -------------------------------------------------------
def test_jitter_is_deterministic_per_tick_and_within_bounds():
    due = utc(2026, 1, 1)
    assert jitter_for("a", due, 30) == jitter_for("a", due, 30)
    values = {jitter_for("a", due + timedelta(minutes=i), 30) for i in range(50)}
    assert len(values) > 40 and all(timedelta(0) <= v < timedelta(seconds=30) for v in values)
    assert jitter_for("a", due, 0) == timedelta(0)


def _plan(policy: str, limit: int = 1, late: int = 5, on_time: int = 0) -> list[str]:
    now = utc(2026, 1, 1, 1)
    ticks = [now - timedelta(minutes=10 + i) for i in range(late, 0, -1)] + \
            [now - timedelta(seconds=on_time - i) for i in range(on_time)]
    return [outcome for _, outcome in plan_ticks(ticks, now, CatchUp(policy, limit, 60), lambda t: t)]


def test_catch_up_skip_records_every_late_tick_as_missed():
    assert _plan("skip") == [TickOutcome.MISSED] * 5
    assert _plan("skip", on_time=1) == [TickOutcome.MISSED] * 5 + [TickOutcome.FIRED]


def test_catch_up_latest_runs_only_the_most_recent_late_tick_unless_one_is_on_time():
    assert _plan("latest") == [TickOutcome.MISSED] * 4 + [TickOutcome.CAUGHT_UP]
    assert _plan("latest", on_time=1) == [TickOutcome.MISSED] * 5 + [TickOutcome.FIRED]


def test_catch_up_all_runs_the_most_recent_late_ticks_up_to_the_limit():
    assert _plan("all", limit=3) == [TickOutcome.MISSED] * 2 + [TickOutcome.CAUGHT_UP] * 3
    assert _plan("all", limit=10) == [TickOutcome.CAUGHT_UP] * 5
    # A limit above the late ticks but below twice their number (found by the scenario suite:
    # late[len - limit:] with a negative start kept only the last few).
    assert _plan("all", limit=7) == [TickOutcome.CAUGHT_UP] * 5
    assert _plan("all", limit=2, on_time=2) == \
        [TickOutcome.MISSED] * 3 + [TickOutcome.CAUGHT_UP] * 2 + [TickOutcome.FIRED] * 2


@pytest.mark.parametrize("policy,running,buffered,expected", [
    ("allow", True, False, OverlapAction.FIRE), ("skip", False, False, OverlapAction.FIRE),
    ("skip", True, False, OverlapAction.SKIP),
    ("buffer_one", True, False, OverlapAction.BUFFER), ("buffer_one", True, True, OverlapAction.SKIP),
    ("buffer_one", False, False, OverlapAction.FIRE), ("cancel_running", True, False, OverlapAction.CANCEL_AND_FIRE),
    ("cancel_running", False, False, OverlapAction.FIRE),
])
def test_overlap_policies_decide_what_a_tick_does_while_the_previous_run_goes(policy, running, buffered, expected):
    assert overlap_action(policy, running, buffered) == expected


def test_the_tick_key_is_stable_and_fits_an_idempotency_key():
    key = tick_key("0" * 36, datetime(2026, 1, 1, 1, tzinfo=UTC))
    assert key == f"schedule:{'0' * 36}:2026-01-01T01:00:00+00:00" and len(key) < 200
