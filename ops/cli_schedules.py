"""`miniflow schedules ...` and `miniflow timer` (the cron timer): being written, see issue 4."""

from __future__ import annotations

import click


@click.group()
def schedules() -> None:
    """Cron schedules of workflows."""
TIMER_COMMANDS: list[click.Command] = []
