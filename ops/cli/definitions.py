"""`miniflow db upgrade`, `miniflow deploy FILE` and `miniflow workflows list`."""

from __future__ import annotations

import dataclasses

import click
from rich.table import Table

from miniflow.coordinator import Catalog, load_file
from miniflow.persistence import repository as repo

from ..terminal import safe_text
from ..views import print_json
from .common import console, database_of


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str, as_json: bool) -> None:
    """Create or migrate the schema (Alembic)."""
    database = database_of(ctx)
    database.upgrade(revision)
    if as_json:
        print_json(console, {"database": database.masked_url, "revision": revision})
    else:
        console.print(f"database {database.masked_url} is at {revision}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--version", "version", type=int, default=None,
              help="Store as this version (default: the next one, unless unchanged).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def deploy(ctx: click.Context, file: str, version: int | None, as_json: bool) -> None:
    """Store the workflow in FILE as a new (immutable) version."""
    workflow = load_file(file)
    if version is not None:
        workflow = dataclasses.replace(workflow, version=version)
    with database_of(ctx).transaction() as conn:
        stored, created = Catalog().deploy(conn, workflow, file)
    if as_json:
        print_json(console, {"workflow": workflow.name, "version": stored, "created": created, "source": file})
        return
    state = "deployed" if created else "unchanged, already deployed as"
    console.print(f"{workflow.name}: {state} version {stored}")


@click.group()
def workflows() -> None:
    """Deployed workflows."""


@workflows.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workflows_list(ctx: click.Context, as_json: bool) -> None:
    with database_of(ctx).connect() as conn:
        rows = repo.list_definitions(conn)
    if as_json:
        print_json(console, [{"name": r.name, "version": r.version, "source": r.source} for r in rows])
        return
    table = Table("name", "version", "source", "deployed")
    for r in rows:
        table.add_row(*(safe_text(v) for v in (r.name, str(r.version), r.source or "-", str(r.created_at)[:19])))
    console.print(table)
