"""The `miniflow` command line: one module per command group, and ``main``, the one place errors
become exit codes.

    0    success
    1    the run failed or was cancelled; a MiniFlow error with no code of its own
    2    an invalid workflow file, schedule or setting (DefinitionError, ConfigError, VersionConflict);
         with --wait, a rejected start
    3    the database or the broker could not be reached (DatabaseUnavailable, BrokerUnavailable)
    124  a wait ran past its --timeout (WaitTimedOut)
    130  interrupted
"""

from __future__ import annotations

import sys

import click

from miniflow.protocol.errors import (
    BrokerUnavailable,
    ConfigError,
    DatabaseUnavailable,
    DefinitionError,
    MiniFlowError,
    VersionConflict,
    WaitTimedOut,
)

from .. import logging as mf_logging
from ..settings import Settings
from .api import api, audit
from .artifacts import artifacts
from .broker import broker
from .cache import cache
from .common import err
from .dead_letters import dead_letters
from .definitions import db, deploy, workflows
from .keys import keys
from .monitor import monitor, queues, stats, why
from .monitor import workers as workers_list
from .pools import pools
from .run import run, validate
from .runs import runs
from .schedules import schedules
from .start import start
from .test import test
from .workers import timer, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="miniflow")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """MiniFlow: durable DAG workflows on RabbitMQ and Postgres."""
    settings = Settings.from_env()
    mf_logging.configure(settings.log_level, settings.log_format)
    ctx.obj = settings


for _command in (run, validate, db, deploy, workflows, worker, timer, start, runs, dead_letters, schedules, keys,
                 broker, api, audit, workers_list, queues, why, stats, monitor, test, cache, artifacts, pools):
    cli.add_command(_command)

EXIT_CODES: tuple[tuple[type[MiniFlowError], int], ...] = (
    (DefinitionError, 2), (ConfigError, 2), (VersionConflict, 2), (DatabaseUnavailable, 3),
    (BrokerUnavailable, 3), (WaitTimedOut, 124),
)


def exit_code(exc: MiniFlowError) -> int:
    """The exit code of a MiniFlow error (1 for those without one of their own)."""
    return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 1)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MiniFlowError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exit_code(exc))


__all__ = ["cli", "exit_code", "main"]
