"""`miniflow start WORKFLOW`: publish a start as any producer would, and optionally follow the run."""

from __future__ import annotations

import sys
import uuid

import click
from opentelemetry.trace import SpanKind

from miniflow.actors.middleware.tracing import inject, tracer
from miniflow.protocol.publisher import Publisher

from ..telemetry import setup as telemetry_setup
from ..views import print_json
from .common import console, database_of, follow, parse_params, settings_of


@click.command()
@click.argument("workflow")
@click.option("-p", "--param", "params", multiple=True, help="Run parameter key=value (repeatable).")
@click.option("--version", "version", type=int, default=None, help="Workflow version (default: latest).")
@click.option("--key", default=None, help="Idempotency key (default: a new one): the same key starts one run.")
@click.option("--priority", default=0, type=click.IntRange(0, 9), show_default=True)
@click.option("--wait", is_flag=True, help="Follow the run to its end (needs MINIFLOW_DATABASE_URL).")
@click.option("--timeout", default=None, type=float, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(ctx: click.Context, workflow: str, params: tuple[str, ...], version: int | None, key: str | None,
          priority: int, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Publish a start-workflow message (exit 0 once confirmed; with --wait, once the run succeeds)."""
    settings = settings_of(ctx)
    url = settings.require_broker()
    key = key or str(uuid.uuid4())
    telemetry = telemetry_setup("miniflow-cli")
    try:
        with tracer().start_as_current_span(f"start {workflow}", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "rabbitmq", "messaging.operation.type": "send",
                "messaging.destination.name": f"{settings.namespace}.ingress", "miniflow.workflow": workflow}):
            traceparent = inject({}).get("traceparent")
            with Publisher(url, settings.namespace) as publisher:
                message_id = publisher.start_workflow(workflow, params=parse_params(params), version=version,
                                                      idempotency_key=key, priority=priority,
                                                      traceparent=traceparent)
    finally:
        telemetry.shutdown()
    if not wait:
        if as_json:
            print_json(console, {"message_id": message_id, "idempotency_key": key})
        else:
            console.print(f"start of {workflow} published: message {message_id}, idempotency key {key}")
        return
    sys.exit(follow(database_of(ctx), key, message_id, timeout, as_json))
