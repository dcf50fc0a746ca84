"""What the command modules share: the consoles, the settings of this invocation, the database,
parsing of ``-p key=value``, and the follow-a-run loop of `start --wait` and `runs retry --wait`."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console

from miniflow.persistence import Database
from miniflow.persistence import repository as repo
from miniflow.persistence.repository import keys as krepo
from miniflow.protocol.auth import CORE, MAY_SEND, ClientKey
from miniflow.protocol.errors import ConfigError, WaitTimedOut
from miniflow.protocol.names import START_WORKFLOW
from miniflow.protocol.states import RUN_TERMINAL, RunStatus, StepStatus

from ..polling import poll_until
from ..settings import Settings
from ..terminal import SafeConsole
from ..views import print_json, run_to_dict, secret_params

PIPED_WIDTH = 4096  # piped output is not cut at 80 columns: a line is as long as it needs


def _console(stderr: bool) -> Console:
    """A console for a terminal as usual; for a pipe or a file, lines are never wrapped or cut
    (COLUMNS, when set, is the width of tables). Markup is off: text from messages and steps is
    printed as it is (styles are set with rich Text objects, never parsed from strings), and control
characters in it are shown as escapes (ops/terminal.py)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return SafeConsole(stderr=stderr, markup=False, highlight=False)
    return SafeConsole(stderr=stderr, width=int(os.environ.get("COLUMNS") or 0) or PIPED_WIDTH, soft_wrap=True,
                   markup=False, highlight=False)


console = _console(stderr=False)
err = _console(stderr=True)


def settings_of(ctx: click.Context) -> Settings:
    """The settings the root command read from the environment."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings.from_env()


def database_of(ctx: click.Context) -> Database:
    return Database(settings_of(ctx).database_url)


def signing_key(settings: Settings, actor: str, database: Database | None = None) -> ClientKey | None:
    """The client key a command signs ``actor`` with (MINIFLOW_KEY); ConfigError, before anything is
    published, when message authentication needs one and there is none, or its role may not send it."""
    key = settings.client_key
    needed = settings.auth and (actor != START_WORKFLOW or settings.signed_starts)
    allowed = sorted(MAY_SEND[actor] - {CORE})
    if key is None:
        if needed:
            raise ConfigError(f"{actor} must be signed by a key of role {' or '.join(allowed)}: set MINIFLOW_KEY "
                              "(`miniflow keys create --name NAME --role operator` makes one); nothing was published")
        return None
    if database is not None:
        with database.connect() as conn:
            row = krepo.api_key(conn, key.kid)
        if row is None or row.revoked_at is not None:
            raise ConfigError(f"MINIFLOW_KEY {key.kid} is unknown or revoked in this database; nothing was published")
        if row.role not in allowed:
            raise ConfigError(f"MINIFLOW_KEY {key.kid} has role {row.role}; {actor} needs {' or '.join(allowed)}; "
                              "nothing was published")
    return key


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """-p key=value pairs; values are JSON when they parse as JSON (3, true, [1,2]), else text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-p/--param")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def say(as_json: bool, data: dict[str, Any], text: str) -> None:
    """The outcome of a command: ``data`` as JSON with --json, else ``text``."""
    if as_json:
        print_json(console, data)
    else:
        console.print(text)


class _Follower:
    """One look at the run of an idempotency key per call: prints what changed; the exit code once
    the run has ended (or its start was rejected), else None."""

    def __init__(self, database: Database, key: str, message_id: str, as_json: bool) -> None:
        self.database, self.key, self.message_id, self.as_json = database, key, message_id, as_json
        self.run_id: str | None = None
        self.seen: dict[str, tuple[StepStatus, int]] = {}

    def __call__(self) -> int | None:
        with self.database.connect() as conn:
            self.run_id = self.run_id or repo.run_id_for_key(conn, self.key)
            if self.run_id is None:
                rejected = repo.dead_letters_for_message(conn, self.message_id) if self.message_id else []
                if rejected:
                    err.print(f"start rejected: {rejected[0].code}: {rejected[0].detail}", highlight=False)
                    return 2
                return None
            run = repo.get_run(conn, self.run_id)
            assert run is not None
            steps = repo.get_steps(conn, self.run_id)
            if not self.seen and not self.as_json:
                console.print(f"run {self.run_id} ({run.workflow} v{run.version})", highlight=False)
            for name, s in steps.items():
                if self.seen.get(name) != (s.status, s.attempt):
                    self.seen[name] = (s.status, s.attempt)
                    if not self.as_json and s.status != StepStatus.PENDING:
                        console.print(f"  {name}: {s.status} (attempt {s.attempt})", highlight=False)
            if run.status not in RUN_TERMINAL:
                return None
            if self.as_json:
                print_json(console, run_to_dict(run, list(steps.values()), repo.get_attempts(conn, self.run_id),
                                                secret_params(conn, run.workflow, run.version)))
            else:
                console.print(f"run {run.status}" + (f": {run.error}" if run.error else ""), highlight=False)
            return 0 if run.status == RunStatus.SUCCEEDED else 1


def follow(database: Database, key: str, message_id: str, timeout: float | None, as_json: bool) -> int:
    """Wait for the run of an idempotency key, printing its steps as they change; the exit code
    (0 succeeded, 1 failed or cancelled, 2 rejected, 124 timed out)."""
    follower = _Follower(database, key, message_id, as_json)
    try:
        return poll_until(follower, timeout=timeout, interval=0.2, what="the run")
    except WaitTimedOut as exc:
        err.print(str(exc) + (f" {follower.run_id}" if follower.run_id else ""))
        return 124
