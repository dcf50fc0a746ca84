"""Schedules as written: a workflow file's optional top-level ``schedules:`` list or the command
line's options, validated into a :class:`ScheduleSpec` (see docs/scheduling.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from miniflow.protocol.errors import DefinitionError

from .cron import parse_cron
from .definitions import NAME_RE, load_yaml, read_source
from .schedule_policy import CATCH_UP_POLICIES, MAX_CATCH_UP_LIMIT, OVERLAP_POLICIES, CatchUp

MAX_JITTER_S = 24 * 3600
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
        value = value.replace(tzinfo=ZoneInfo(timezone))
    when: datetime = value.astimezone(UTC)
    return when


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


def _parse_window(data: dict[str, Any], timezone: str, where: str) -> tuple[datetime | None, datetime | None]:
    start = _when(data.get("start"), "'start'", timezone, where)
    end = _when(data.get("end"), "'end'", timezone, where)
    if start is not None and end is not None and end <= start:
        raise DefinitionError(where, f"the window ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    return start, end


def _parse_jitter(jitter: Any, where: str) -> float:
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or jitter != jitter:
        raise DefinitionError(where, "'jitter' must be a number of seconds")
    if jitter < 0:
        raise DefinitionError(where, "'jitter' must not be negative")
    if jitter > MAX_JITTER_S:
        raise DefinitionError(where, f"'jitter' must be at most {MAX_JITTER_S} seconds")
    return float(jitter)


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
    start, end = _parse_window(data, timezone, where)
    jitter = _parse_jitter(data.get("jitter", 0), where)
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
                        version=version, start=start, end=end, jitter_s=jitter,
                        catch_up=_parse_catch_up(data.get("catch_up"), where), overlap=overlap,
                        priority=priority, paused=paused)


def load_schedules_file(path: str | Path) -> list[ScheduleSpec]:
    """The ``schedules:`` of a workflow file (its other keys are the workflow's business)."""
    source = str(path)
    data = load_yaml(read_source(path), source)
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
