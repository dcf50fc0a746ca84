"""`miniflow dead-letters list`: rejected messages, archived with their reason."""

from __future__ import annotations

import click
from rich.table import Table

from miniflow.persistence import repository as repo

from ..terminal import safe_text
from ..views import dead_letter_to_dict, print_json
from .common import console, database_of


@click.group("dead-letters")
def dead_letters() -> None:
    """Rejected messages, archived with their reason."""


@dead_letters.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dead_letters_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    with database_of(ctx).connect() as conn:
        items = [dead_letter_to_dict(r) for r in repo.list_dead_letters(conn, limit)]
    if as_json:
        print_json(console, items)
        return
    table = Table("id", "queue", "message", "code", "detail", "when")
    for i in items:
        table.add_row(*(safe_text(v) for v in (str(i["id"]), i["queue"], i["message_id"] or "-", i["code"],
                                          i["detail"][:80], i["created_at"][:19])))
    console.print(table)
