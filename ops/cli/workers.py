"""`miniflow worker` and `miniflow timer`: the long-running processes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from miniflow.actors import ROLES
from miniflow.actors.heartbeat import DEFAULT_INTERVAL_S
from miniflow.actors.progress import RUNNING_AFTER_S
from miniflow.protocol.messages import MIN_HEARTBEAT_S

from ..worker import default_threads, run_timer, run_worker
from .common import settings_of

METRICS_PORT = click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=None,
    help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (0: a free port, named in the ready line) "
         "[default: MINIFLOW_METRICS_PORT; off when neither is set].")
HEARTBEAT = click.option(
    "--heartbeat", default=DEFAULT_INTERVAL_S, show_default=True, type=click.FloatRange(MIN_HEARTBEAT_S, 3600),
    help="Seconds between heartbeats to the workers registry (late after 2.5 missed, gone after 6).")


@click.command()
@click.option("--role", "roles", multiple=True, type=click.Choice(list(ROLES)),
              help="Role(s) to serve (repeatable; default: all three).")
@click.option("--steps", multiple=True, help="Module(s) that register steps (executor role).")
@click.option("--queue", "pools", multiple=True, help="Extra step queue(s) (pools) to consume.")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="Worker threads [default: 16 with the coordinator or results role, which mostly wait on "
                   "the database and the broker; 8 for an executor].")
@click.option("--report-running-after", "running_after", default=RUNNING_AFTER_S, show_default=True,
              type=click.FloatRange(0), help="Seconds a step runs before its executor tells the coordinator (the "
              "step then shows as running); faster steps send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as a JSON object (on stderr).")
@METRICS_PORT
@HEARTBEAT
@click.pass_context
def worker(ctx: click.Context, roles: tuple[str, ...], steps: tuple[str, ...], pools: tuple[str, ...],
           threads: int | None, running_after: float, as_json: bool, metrics_port: int | None,
           heartbeat: float) -> None:
    """Serve actors on this node until SIGINT/SIGTERM (executors need only the broker)."""
    roles_list = list(roles) or (["executor"] if steps and not roles else [])
    code = run_worker(settings_of(ctx), roles_list, list(steps), list(pools), threads or default_threads(roles_list),
                      ready=_ready(as_json), running_after_s=running_after, metrics_port=metrics_port,
                      heartbeat_s=heartbeat)
    sys.exit(code)


@click.command()
@click.option("--max-sleep", default=1.0, show_default=True, type=float,
              help="Longest wait between passes (new and paused schedules are seen this fast).")
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as a JSON object (on stderr).")
@METRICS_PORT
@HEARTBEAT
@click.pass_context
def timer(ctx: click.Context, max_sleep: float, as_json: bool, metrics_port: int | None, heartbeat: float) -> None:
    """Run a cron timer until SIGINT/SIGTERM (run as many as you like: each tick fires once)."""
    sys.exit(run_timer(settings_of(ctx), max_sleep, ready=_ready(as_json), metrics_port=metrics_port,
                       heartbeat_s=heartbeat))


def _ready(as_json: bool) -> Callable[[str, dict[str, Any]], None]:
    def say(line: str, data: dict[str, Any]) -> None:
        click.echo(json.dumps(data) if as_json else line, err=True)

    return say
