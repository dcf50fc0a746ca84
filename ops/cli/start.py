"""`miniflow start WORKFLOW`: publish a start as any producer would, and optionally follow the run."""

from __future__ import annotations

import shlex
import sys
import uuid
from typing import Any

import click
from opentelemetry.trace import SpanKind

from miniflow.actors.middleware.tracing import inject, tracer
from miniflow.coordinator import Catalog, resolve_params
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import ConfigError, DatabaseUnavailable, MessageRejected
from miniflow.protocol.names import START_WORKFLOW
from miniflow.protocol.publisher import Publisher

from ..telemetry import setup as telemetry_setup
from ..views import print_json
from .common import console, database_of, err, follow, parse_params, settings_of, signing_key


def _check_start(ctx: click.Context, workflow: str, version: int | None, params: dict[str, Any]) -> None:
    """What the coordinator would reject, refused before publishing (exit 2 with the reason): an
    unknown workflow or version, unknown or missing params. If the database cannot be reached the
    start goes out unchecked (the coordinator checks it anyway)."""
    database = database_of(ctx)
    try:
        with database.connect() as conn:
            found = Catalog().workflow(conn, workflow, version)
            deployed = found is not None or (version is not None and repo.latest_version(conn, workflow) is not None)
    except DatabaseUnavailable as exc:
        err.print(f"warning: the start is not checked before it is published: {exc}")
        return
    finally:
        database.dispose()
    if found is None:
        what = f"workflow {workflow!r} has no version {version}" if deployed else \
            f"workflow {workflow!r} is not deployed"
        raise ConfigError(f"{what} (see `miniflow workflows list`); nothing was published")
    try:
        resolve_params(found, params)
    except MessageRejected as exc:
        raise ConfigError(f"{exc.detail}; nothing was published") from None


@click.command()
@click.argument("workflow")
@click.option("-p", "--param", "params", multiple=True, help="Run parameter key=value (repeatable).")
@click.option("--version", "version", type=int, default=None, help="Workflow version (default: latest).")
@click.option("--key", default=None, help="Idempotency key (default: a new one): the same key starts one run.")
@click.option("--priority", default=0, type=click.IntRange(0, 9), show_default=True)
@click.option("--wait", is_flag=True, help="Follow the run to its end (needs MINIFLOW_DATABASE_URL).")
@click.option("--timeout", default=None, type=float, help="With --wait: give up after this many seconds.")
@click.option("--no-check", "no_check", is_flag=True,
              help="Publish without checking the workflow and params against the database first.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(ctx: click.Context, workflow: str, params: tuple[str, ...], version: int | None, key: str | None,
          priority: int, wait: bool, timeout: float | None, no_check: bool, as_json: bool) -> None:
    """Publish a start-workflow message (exit 0 once confirmed; with --wait, once the run succeeds)."""
    settings = settings_of(ctx)
    url = settings.require_broker()
    key = key or str(uuid.uuid4())
    given = parse_params(params)
    if settings.database_configured and not no_check:
        _check_start(ctx, workflow, version, given)
    signer = signing_key(settings, START_WORKFLOW, database_of(ctx) if settings.database_configured and not no_check
                         else None)
    telemetry = telemetry_setup("miniflow-cli")
    try:
        with tracer().start_as_current_span(f"start {workflow}", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "rabbitmq", "messaging.operation.type": "send",
                "messaging.destination.name": f"{settings.namespace}.ingress", "miniflow.workflow": workflow}):
            traceparent = inject({}).get("traceparent")
            with Publisher(url, settings.namespace, key=signer) as publisher:
                message_id = publisher.start_workflow(workflow, params=given, version=version,
                                                      idempotency_key=key, priority=priority,
                                                      traceparent=traceparent)
    finally:
        telemetry.shutdown()
    if not wait:
        show = f"miniflow runs show --key {shlex.quote(key)}"
        if as_json:
            print_json(console, {"message_id": message_id, "idempotency_key": key, "show": show})
        else:
            console.print(f"start of {workflow} published: message {message_id}, idempotency key {key}")
            console.print(f"the run is found by its key: {show}")
        return
    sys.exit(follow(database_of(ctx), key, message_id, timeout, as_json))
