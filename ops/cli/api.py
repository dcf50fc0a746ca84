"""`miniflow api` (serve the HTTP API) and `miniflow audit list` (its audit trail)."""

from __future__ import annotations

import logging
from typing import Any

import click
from rich.table import Table

from miniflow.persistence.repository import audit as arepo
from miniflow.protocol.masking import mask_url
from miniflow.protocol.names import QueueNames

from ..telemetry import setup as telemetry_setup
from ..terminal import safe_text
from ..views import iso, print_json
from ..worker import start_metrics, watch_gauges
from .common import console, database_of, err, settings_of
from .workers import METRICS_PORT

log = logging.getLogger("miniflow.api")


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--auth-failures", default=20, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Failed sign-ins per client address and minute before it gets 429 for the rest of the minute.")
@click.option("--access-log", is_flag=True, help="Log each request line (method, path, status; never headers).")
@click.option("--secure-cookies", is_flag=True,
              help="Mark the web UI's cookies Secure even over plain HTTP (behind a proxy that terminates TLS); "
                   "over HTTPS they are Secure anyway.")
@METRICS_PORT
@click.pass_context
def api(ctx: click.Context, host: str, port: int, auth_failures: int, access_log: bool, secure_cookies: bool,
        metrics_port: int | None) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json; keys from `miniflow keys create`) and the web UI
    (/ui: sign in with a viewer, operator or admin key). Prints one
    `ready` line once it listens (port 0: a free port, named in that line); stops on SIGINT/SIGTERM."""
    import socket

    import uvicorn

    from ..api import create_app
    from ..api.listen import listen_socket

    settings = settings_of(ctx)
    database = database_of(ctx)
    database.ping()  # an unreachable database exits 3 with one line, before "ready"
    if settings.broker_url is None:
        err.print("warning: no MINIFLOW_BROKER_URL: starts, cancels and retries answer 503")
    metrics, served = start_metrics(settings, "api", metrics_port)
    watch_gauges(metrics, settings, database, QueueNames(settings.namespace))
    telemetry = telemetry_setup("miniflow-api")
    app = create_app(settings, database=database, failure_limit=auth_failures, secure_cookies=secure_cookies)
    sock = listen_socket(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, access_log=access_log, log_level="warning", lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets)
        if server.started:
            err.print(f"miniflow api ready on http://{host}:{bound} (web UI /ui; database {database.masked_url}, "
                      f"broker "
                      f"{mask_url(settings.broker_url) if settings.broker_url else 'none'}, namespace "
                      f"{settings.namespace}){served}", highlight=False)

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run(sockets=[sock])
    finally:
        telemetry.shutdown()


@click.group()
def audit() -> None:
    """The audit trail of the HTTP API."""


@audit.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--key", "key_id", default=None, help="Only the calls of this key id.")
@click.option("--outcome", default=None, type=click.Choice(["ok", "denied", "failed"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_list(ctx: click.Context, limit: int, key_id: str | None, outcome: str | None, as_json: bool) -> None:
    """Every mutating API call and every denied one, newest first."""
    with database_of(ctx).connect() as conn:
        rows = arepo.list_audit(conn, limit=limit, key_id=key_id, outcome=outcome)
    data: list[dict[str, Any]] = [{
        "id": r.id, "at": iso(r.at), "key_id": r.key_id, "key_name": r.key_name, "role": r.role,
             "action": r.action, "resource": r.resource, "outcome": r.outcome, "status": r.status,
             "client": r.client, "detail": r.detail} for r in rows]
    if as_json:
        print_json(console, data)
        return
    table = Table("at", "key", "role", "action", "resource", "outcome", "status", "client", "detail")
    for d in data:
        table.add_row(*(safe_text(str(v) if v is not None else "-") for v in (
            str(d["at"] or "")[:19], d["key_name"] or d["key_id"], d["role"], d["action"], d["resource"], d["outcome"],
            d["status"], d["client"], d["detail"])))
    console.print(table)
