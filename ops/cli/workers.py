"""`miniflow worker` and `miniflow timer`: the long-running processes."""

from __future__ import annotations

import sys

import click

from miniflow.actors import ROLES

from ..worker import default_threads, run_timer, run_worker
from .common import settings_of


@click.command()
@click.option("--role", "roles", multiple=True, type=click.Choice(list(ROLES)),
              help="Role(s) to serve (repeatable; default: all three).")
@click.option("--steps", multiple=True, help="Module(s) that register steps (executor role).")
@click.option("--queue", "pools", multiple=True, help="Extra step queue(s) (pools) to consume.")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="Worker threads [default: 16 with the coordinator or results role, which mostly wait on "
                   "the database and the broker; 8 for an executor].")
@click.pass_context
def worker(ctx: click.Context, roles: tuple[str, ...], steps: tuple[str, ...], pools: tuple[str, ...],
           threads: int | None) -> None:
    """Serve actors on this node until SIGINT/SIGTERM (executors need only the broker)."""
    roles_list = list(roles) or (["executor"] if steps and not roles else [])
    code = run_worker(settings_of(ctx), roles_list, list(steps), list(pools), threads or default_threads(roles_list),
                      ready=lambda line: click.echo(line, err=True))
    sys.exit(code)


@click.command()
@click.option("--max-sleep", default=1.0, show_default=True, type=float,
              help="Longest wait between passes (new and paused schedules are seen this fast).")
@click.pass_context
def timer(ctx: click.Context, max_sleep: float) -> None:
    """Run a cron timer until SIGINT/SIGTERM (run as many as you like: each tick fires once)."""
    sys.exit(run_timer(settings_of(ctx), max_sleep, ready=lambda line: click.echo(line, err=True)))
