"""Text for the terminal: whatever came from a message, a step or a user is shown, never obeyed.

Rich markup is off on every console (``[/bold]`` in an error prints as it is). On top of that,
:class:`SafeConsole` shows control characters as visible escapes (``\\x1b``, ``\\r``, ...) in every
segment it renders, so a step error cannot move the cursor, recolour or clear the screen, rewrite
an earlier line, or reorder text with bidirectional overrides. Newlines and tabs stay. MiniFlow's
own styles are applied after this, so colours in tables still work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides and isolates.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every unsafe character as a visible escape (idempotent)."""
    return UNSAFE.sub(_visible, text)


class SafeConsole(Console):
    """A console that escapes control characters in everything it prints (see the module doc)."""

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and UNSAFE.search(segment.text):
                yield Segment(escape_controls(segment.text), segment.style)
            else:
                yield segment

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(escape_controls(text), **kwargs)


def safe_text(value: str, style: str = "") -> Text:
    """A Text of ``value`` with its control characters escaped before it is measured (use it for
    every table cell whose text came from outside)."""
    return Text(escape_controls(value), style)
