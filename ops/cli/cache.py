"""`miniflow cache list|clear`: the result cache of steps (coordinator/cache.py)."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from miniflow.persistence import CacheRow
from miniflow.persistence import repository as repo
from miniflow.protocol.clock import utcnow

from ..terminal import safe_text
from ..views import print_json
from .common import console, database_of


def entry_to_dict(row: CacheRow) -> dict[str, Any]:
    """An entry as the CLI shows it (not its output: `miniflow runs show` has that)."""
    return {"digest": row.digest, "task": row.task, "workflow": row.workflow, "step": row.step,
            "run_id": row.run_id, "size": row.size, "created_at": row.created_at.isoformat(),
            "expires_at": row.expires_at.isoformat(), "hits": row.hits,
            "last_hit_at": row.last_hit_at.isoformat() if row.last_hit_at else None}


@click.group("cache")
def cache() -> None:
    """The result cache: outputs of cached steps, reused by later steps of the same task and key."""


@cache.command("list")
@click.option("--task", default=None, help="Only the entries of this task.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cache_list(ctx: click.Context, task: str | None, limit: int, as_json: bool) -> None:
    """The entries, the newest first (expired ones, not served any more, are marked)."""
    now = utcnow()
    with database_of(ctx).connect() as conn:
        rows = repo.cache_list(conn, task=task, limit=limit)
        count, size = repo.cache_stats(conn)
    items = [dict(entry_to_dict(r), expired=r.expires_at <= now) for r in rows]
    if as_json:
        print_json(console, {"entries": items, "total": count, "bytes": size})
        return
    table = Table("digest", "task", "stored by", "size", "hits", "stored", "expires")
    for i in items:
        table.add_row(*(safe_text(v) for v in (
            i["digest"][:19], i["task"], f"{i['workflow']}/{i['step']} ({i['run_id'][:8]})", str(i["size"]),
            str(i["hits"]), i["created_at"][:19], "expired" if i["expired"] else i["expires_at"][:19])))
    console.print(table)
    console.print(f"{count} entr{'y' if count == 1 else 'ies'}, {size} bytes of outputs", highlight=False)


@cache.command("clear")
@click.option("--task", default=None, help="Only the entries of this task.")
@click.option("--digest", default=None, help="Only the entry of this digest (sha256:...).")
@click.option("--expired", is_flag=True, help="Only the entries past their ttl.")
@click.option("--all", "everything", is_flag=True, help="Every entry (needed when no other option narrows it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cache_clear(ctx: click.Context, task: str | None, digest: str | None, expired: bool, everything: bool,
                as_json: bool) -> None:
    """Delete entries: the next step of their task and key runs again."""
    if not (task or digest or expired or everything):
        raise click.UsageError("say what to clear: --task T, --digest D, --expired, or --all")
    with database_of(ctx).transaction() as conn:
        removed = repo.cache_clear(conn, task=task, digest=digest, expired_before=utcnow() if expired else None)
    if as_json:
        print_json(console, {"removed": removed})
        return
    console.print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}", highlight=False)
