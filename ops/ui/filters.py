"""Template filters: times, durations, status classes, short values. Every one returns plain text; the
templates' autoescape makes it safe for the page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment

from ..views import fmt_ms, short

_CLASS = re.compile(r"[^a-z_]")
KNOWN_STATUS = frozenset({"pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped",
                          "upstream_failed", "alive", "late", "gone", "stopped", "fired", "missed"})


def when(value: Any, tz: str | None = None) -> str:
    """An ISO time (or datetime) as 'YYYY-MM-DD HH:MM:SS' in UTC, or in ``tz`` with its abbreviation."""
    if not value:
        return "-"
    try:
        at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)[:40]
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if tz:
        try:
            local = at.astimezone(ZoneInfo(tz))
            return local.strftime("%Y-%m-%d %H:%M:%S %Z")
        except (KeyError, ValueError):
            pass
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_class(value: Any) -> str:
    """A CSS class for a status (only known ones: a status is data)."""
    name = _CLASS.sub("", str(value or "").lower())
    return f"st-{name}" if name in KNOWN_STATUS else "st-other"


def data(value: Any, limit: int = 120) -> str:
    return short(value, limit)


def pretty(value: Any, limit: int = 20_000) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def hexdump(raw: str | None, width: int = 16) -> str:
    """Hex text (as the API gives it) as lines of offset, hex bytes and printable ASCII."""
    if not raw:
        return ""
    data_ = bytes.fromhex(raw)
    lines = []
    for at in range(0, len(data_), width):
        chunk = data_[at:at + width]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{at:06x}  {chunk.hex(' '):<{width * 3}} {text}")
    return "\n".join(lines)


def install(env: Environment) -> None:
    env.filters.update(when=when, status_class=status_class, data=data, pretty=pretty, hexdump=hexdump, ms=fmt_ms)
