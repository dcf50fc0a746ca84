"""`miniflow artifacts gc`: remove the artifacts nothing refers to any more (persistence/artifacts.py)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

import click

from miniflow.persistence import repository as repo
from miniflow.persistence.offload import keep_set
from miniflow.protocol.errors import ConfigError

from ..testengine.model import duration_s
from ..views import print_json
from .common import console, database_of, settings_of

DEFAULT_GRACE = "1d"  # an artifact younger than this is kept: its result may not be recorded yet


@click.group("artifacts")
def artifacts() -> None:
    """The artifact store (MINIFLOW_ARTIFACTS): large outputs and files steps pass by reference."""


@artifacts.command("gc")
@click.option("--older-than", default=DEFAULT_GRACE, show_default=True,
              help="Remove only artifacts last written before this long ago (250ms, 10s, 5m, 1h, 7d).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def artifacts_gc(ctx: click.Context, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Remove the artifacts that no run, attempt, map element or cache entry in the database refers
    to (directly, or inside a stored value it refers to), and the temp files of puts that died, once
    older than --older-than. What a row refers to is
    kept however old it is; an artifact a step stored but whose result is not recorded yet is young
    (the grace). Rows go away when their runs are deleted; their artifacts go at the next gc."""
    try:
        grace = timedelta(seconds=duration_s(older_than, "--older-than"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = settings_of(ctx).offload().store
    with database_of(ctx).connect() as conn:
        keep = keep_set(repo.texts_with_refs(conn), store)  # and what the stored values refer to
    report = store.gc(older_than=grace, keep=keep, dry_run=dry_run)
    if as_json:
        print_json(console, {"store": store.url, **asdict(report)})
        return
    verb = "would remove" if dry_run else "removed"
    console.print(f"artifact store {store.url}: {verb} {report.removed} artifact(s), {report.removed_bytes} bytes, "
                  f"and {report.temps_removed} temp file(s); kept {report.kept} ({report.kept_bytes} bytes), "
                  f"{report.referenced} of them referenced", highlight=False, markup=False)
    if report.missing:
        console.print(f"{report.missing} referenced artifact(s) are not in the store (collected or never stored "
                      "there: check MINIFLOW_ARTIFACTS on every process)", style="yellow", highlight=False,
                      markup=False)
