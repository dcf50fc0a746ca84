"""The HTTP API over real HTTP (uvicorn on a free port), on the embedded mode's SQLite database with
runs made by the embedded engine. No broker here: what publishes answers 503, which the matrix
counts as authorised; publishing through the API is tested on RabbitMQ in
tests/integration/test_api.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.routing import APIRoute

from miniflow.coordinator import Scheduler, loads, parse_schedule
from miniflow.ops.api import create_app, security
from miniflow.ops.api.security import GLOBAL, GRANTS, LIST, POLICY, SELF, WORKFLOW, Perm
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.settings import Settings
from miniflow.persistence import Database, DeadLetterRow
from miniflow.persistence import repository as repo
from miniflow.persistence.keys import create_client_key
from miniflow.persistence.repository import audit as arepo
from miniflow.persistence.repository import keys as krepo
from miniflow.persistence.sealing import KeyRing, new_key_line
from miniflow.protocol.clock import utcnow
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.names import QueueNames

from .api_server import ApiServer

SECRET = "s3cr3t-token-value-1234567"
FAILING = """name: billing-report
params: {token: {secret: true}, region: {default: EU}}
steps:
  - {name: load, task: test.echo}
  - {name: boom, task: test.boom, needs: [load]}
"""
PASSING = """name: billing-ok
params: {token: {secret: true}}
steps:
  - {name: echo, task: test.echo}
"""
# admin last: what it deletes is then still there for the others to be refused
IDENTITIES = ("none", "malformed", "unknown", "revoked", "expired", "viewer", "producer", "executor", "scoped",
              "operator", "admin")


@dataclass
class World:
    url: str
    db: str
    ring: KeyRing
    tokens: dict[str, str]
    failed_run: str
    ok_run: str
    letter_id: int
    server: ApiServer


def _keys(database: Database, ring: KeyRing) -> dict[str, str]:
    tokens: dict[str, str] = {}
    with database.transaction() as conn:
        for role in ("viewer", "producer", "operator", "admin", "executor"):
            tokens[role], _ = create_client_key(conn, ring, role, role)
        tokens["revoked"], row = create_client_key(conn, ring, "revoked", "admin")
        krepo.revoke_api_key(conn, row.kid, utcnow())
        tokens["expired"], _ = create_client_key(conn, ring, "expired", "admin", utcnow() - timedelta(seconds=1))
        tokens["scoped"], _ = create_client_key(conn, ring, "scoped", "admin", scope="other-*")
    tokens["malformed"] = "mf_not-a-key"
    tokens["unknown"] = "mf_0123456789ab_" + "A" * 43
    return tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{folder / 'api.db'}"
    ring = KeyRing.parse(new_key_line("k1"), "test")
    with EmbeddedEngine(url, threads=2, keys=ring) as engine:
        engine.deploy(loads(FAILING))
        engine.deploy(loads(PASSING))
        failed = engine.wait(engine.submit("billing-report", {"token": SECRET}), timeout=60)
        ok = engine.wait(engine.submit("billing-ok", {"token": SECRET}), timeout=60)
        assert (failed.status, ok.status) == ("failed", "succeeded")
    database = Database(url)
    with database.transaction() as conn:
        spec = parse_schedule({"name": "nightly", "cron": "0 3 * * *", "params": {"token": SECRET}},
                              "billing-report", "test")
        Scheduler(QueueNames("miniflow"), keys=ring).add(conn, spec, utcnow())
        repo.insert_dead_letter(conn, DeadLetterRow(queue="miniflow.ingress", code="malformed", detail="not msgpack",
                                                    raw=b"\xc1 hostile", created_at=utcnow(), message_id="m-1"))
        letter_id = repo.list_dead_letters(conn, 1)[0].id
    tokens = _keys(database, ring)
    app = create_app(Settings(database_url=url, data_keys=ring), database=database, failure_limit=10_000)
    with ApiServer(app) as server:
        assert letter_id is not None
        yield World(server.url, url, ring, tokens, failed.run_id, ok.run_id, letter_id, server)
    database.dispose()


NEEDS_BROKER = frozenset({"list_queues"})


def _path(route: APIRoute, w: World) -> str:
    values = {"run_id": w.failed_run, "name": "nightly" if "schedules" in route.path else "billing-report",
              "version": "1", "letter_id": str(w.letter_id), "kid": "000000000000", "step": "boom"}
    path = route.path
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    assert "{" not in path, f"the matrix has no value for a parameter of {route.path}"
    return path


BODIES: dict[str, Any] = {
    "start_run": {"workflow": "billing-report", "params": {"token": "x"}},
    "deploy_workflow": {"yaml": FAILING},
    "add_schedule": {"name": "nightly-2", "workflow": "billing-report", "cron": "0 4 * * *"},
    "create_key": {"name": "made-by-matrix", "role": "viewer"},
    "cancel_run": {"reason": "matrix"},
}


def _expected(name: str, identity: str) -> str:
    """'ok' (authorised), 401 or 403, from the policy table alone."""
    perm, kind = POLICY[name]
    if perm == Perm.PUBLIC:
        return "ok"
    if identity in ("none", "malformed", "unknown", "revoked", "expired"):
        return "401"
    role = "admin" if identity == "scoped" else identity
    if perm not in GRANTS[role]:
        return "403"
    if identity == "scoped" and kind in (GLOBAL, WORKFLOW):
        return "403"
    return "ok"


def _routes(w: World) -> list[APIRoute]:
    app = create_app(Settings(database_url=w.db))
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.methods and r.include_in_schema]
    # reads first, then changes, deletions last: each call finds what it names
    return sorted(routes, key=lambda r: ("GET" not in (r.methods or ()), "DELETE" in (r.methods or ()), r.path))


def test_every_route_answers_each_kind_of_caller_as_its_policy_says(world: World) -> None:
    routes = _routes(world)
    assert {r.name for r in routes} == set(POLICY) - {"openapi"}, "every route has a policy and every policy a route"
    made = 0
    wrong: list[str] = []
    for route in routes:
        method = sorted(route.methods or {"GET"})[0]
        for identity in IDENTITIES:
            headers = {}
            if identity != "none":
                headers["Authorization"] = f"Bearer {world.tokens[identity]}"
            body: dict[str, Any] | None = BODIES.get(route.name)
            if route.name == "create_key":
                made += 1
                body = dict(BODIES["create_key"], name=f"matrix-{made}")
            with world.server.client() as http:
                answer = http.request(method, _path(route, world), headers=headers,
                                      json=body if method in ("POST", "PUT") else None)
            expected = _expected(route.name, identity)
            got = answer.status_code
            if expected == "ok":
                needs_broker = route.name in NEEDS_BROKER  # no broker here: authorised, then 503
                good = (got == 200 or (needs_broker and got == 503)) if method == "GET" \
                    else (got < 300 or got in (404, 409, 503))
            else:
                good = str(got) == expected
            if got in (401, 403):
                assert answer.json()["error"]["code"] in ("unauthenticated", "forbidden")
            if not good:
                wrong.append(f"{method} {route.path} as {identity}: {got} (expected {expected}) {answer.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_an_app_with_a_route_outside_the_policy_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    policy = dict(security.POLICY)
    del policy["show_run"]
    monkeypatch.setattr("miniflow.ops.api.app.POLICY", policy)
    with pytest.raises(ConfigError, match="show_run"):
        create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"))


def test_an_unknown_key_a_wrong_secret_and_a_revoked_key_get_the_same_answer(world: World) -> None:
    admin = world.tokens["admin"]
    wrong_secret = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    answers = []
    for token in (world.tokens["unknown"], wrong_secret, world.tokens["revoked"], world.tokens["expired"]):
        with world.server.client(token) as http:
            answer = http.get("/runs")
        answers.append((answer.status_code, answer.json(), answer.headers.get("www-authenticate")))
    assert len(set(json.dumps(a, sort_keys=True) for a in answers)) == 1
    assert answers[0][0] == 401


def test_too_many_failed_sign_ins_from_one_address_are_refused_with_429_even_with_a_good_key(world: World) -> None:
    database = Database(world.db)
    app = create_app(Settings(database_url=world.db, data_keys=world.ring), database=database, failure_limit=3)
    with ApiServer(app) as server:
        with server.client("mf_0123456789ab_" + "B" * 43) as http:
            codes = [http.get("/whoami").status_code for _ in range(4)]
        with server.client(world.tokens["admin"]) as http:
            locked = http.get("/whoami")
    assert codes == [401, 401, 401, 429]
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert locked.json()["error"]["code"] == "too_many_failures"
    with database.connect() as conn:
        denied = arepo.list_audit(conn, limit=10, outcome="denied")
    assert {r.status for r in denied} >= {401, 429}
    database.dispose()


def test_secret_params_and_outputs_are_masked_in_every_answer(world: World) -> None:
    with world.server.client(world.tokens["viewer"]) as http:
        texts = [http.get(f"/runs/{world.ok_run}").text, http.get(f"/runs/{world.failed_run}").text,
                 http.get("/runs").text, http.get("/schedules/nightly").text, http.get("/schedules").text,
                 http.get("/workflows/billing-report").text]
        detail = http.get(f"/runs/{world.ok_run}").json()
    assert all(SECRET not in t for t in texts)
    assert detail["params"]["token"] != SECRET
    assert detail["steps"][0]["output"]["params"]["token"] != SECRET  # test.echo returns its params
    assert detail["status"] == "succeeded" and detail["steps"][0]["queue_wait_ms"] is not None


def test_a_run_shows_its_steps_in_dag_order_with_attempts_and_errors(world: World) -> None:
    with world.server.client(world.tokens["viewer"]) as http:
        run = http.get(f"/runs/{world.failed_run[:8]}").json()
    assert run["id"] == world.failed_run
    assert [s["step"] for s in run["steps"]] == ["load", "boom"]
    boom = [a for a in run["attempts"] if a["step"] == "boom"]
    assert boom and not boom[0]["ok"] and "the input is broken" in boom[0]["error"]


def test_runs_are_listed_by_filter_and_walked_by_cursor_without_repeats(world: World) -> None:
    seen: list[str] = []
    with world.server.client(world.tokens["viewer"]) as http:
        cursor = None
        while True:
            page = http.get("/runs", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
            seen += [r["id"] for r in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        failed = http.get("/runs", params={"status": "failed"}).json()["items"]
        pattern = http.get("/runs", params={"workflow": "billing-*"}).json()["items"]
        bad = http.get("/runs", params={"cursor": "garbage"})
        bad_status = http.get("/runs", params={"status": "exploded"})
    assert sorted(seen) == sorted({world.failed_run, world.ok_run}) and len(seen) == 2
    assert [r["id"] for r in failed] == [world.failed_run]
    assert {r["id"] for r in pattern} == {world.failed_run, world.ok_run}
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert bad_status.status_code == 422 and bad_status.json()["error"]["details"][0]["where"] == "query.status"


def test_the_events_stream_of_an_ended_run_gives_its_state_then_ends(world: World) -> None:
    with world.server.client(world.tokens["viewer"]) as http, \
            http.stream("GET", f"/runs/{world.failed_run}/events") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in answer.iter_lines() if line.startswith("data:")]
    assert [e["kind"] for e in events] == ["run", "step", "step", "end"]
    assert events[-1]["status"] == "failed" and {e["step"] for e in events[1:3]} == {"load", "boom"}


def _sse_events(body: str) -> list[dict[str, str]]:
    """Parse a text/event-stream body into events the way a reader (and schemathesis) does."""
    events: list[dict[str, str]] = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            events.append(fields)
    return events


def test_each_event_of_the_stream_matches_the_schema_the_openapi_document_gives_it(world: World) -> None:
    with world.server.client(world.tokens["viewer"]) as http:
        document = http.get("/openapi.json").json()
        body = http.get(f"/runs/{world.failed_run}/events").text
    schema = document["paths"]["/runs/{run_id}/events"]["get"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]
    events = _sse_events(body)
    assert len(events) == 4
    for event in events:
        jsonschema.validate(event, schema)
        jsonschema.validate(json.loads(event["data"]), schema["properties"]["data"]["contentSchema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"event": "run"}, schema)  # the schema says something: data is required


def test_workflows_show_their_definition_as_yaml_and_as_a_graph(world: World) -> None:
    with world.server.client(world.tokens["viewer"]) as http:
        listed = http.get("/workflows").json()
        shown = http.get("/workflows/billing-report").json()
        missing = http.get("/workflows/nope")
    assert {w["name"] for w in listed} >= {"billing-report", "billing-ok"}
    assert shown["graph"]["edges"] == [{"from": "load", "to": "boom"}]
    assert [n["id"] for n in shown["graph"]["nodes"]] == ["load", "boom"]
    assert loads(shown["yaml"]).name == "billing-report"
    assert {p["name"]: p["secret"] for p in shown["params"]} == {"token": True, "region": False}
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_deploy_of_an_invalid_definition_is_a_422_naming_the_problem(world: World) -> None:
    with world.server.client(world.tokens["admin"]) as http:
        answer = http.post("/workflows", json={"yaml": "name: x\nsteps:\n  - {name: a, task: t, needs: [zz]}\n"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_definition" and "zz" in answer.json()["error"]["message"]


def test_a_key_made_through_the_api_works_at_once_and_stops_at_once_when_revoked(world: World) -> None:
    with world.server.client(world.tokens["admin"]) as admin:
        made = admin.post("/keys", json={"name": "ci-bot", "role": "operator", "expires": "1d",
                                         "scope": "billing-*"}).json()
        listed = admin.get("/keys").json()
        with world.server.client(made["token"]) as bot:
            me = bot.get("/whoami").json()
            assert admin.delete(f"/keys/{made['kid']}").status_code == 200
            after = bot.get("/whoami")
        trail = admin.get("/audit", params={"limit": 500}).json()["items"]
    assert me == {"kid": made["kid"], "name": "ci-bot", "role": "operator", "scope": ["billing-*"]}
    assert after.status_code == 401
    assert all("token" not in k for k in listed)
    assert made["token"] not in json.dumps(trail)
    actions = [(e["action"], e["outcome"], e["status"]) for e in trail]
    assert ("create_key", "ok", 201) in actions and ("revoke_key", "ok", 200) in actions
    assert any(e["action"] == "whoami" and e["outcome"] == "denied" and e["key_id"] is None for e in trail)


def test_errors_have_one_shape_and_an_unknown_route_is_a_404(world: World) -> None:
    with world.server.client(world.tokens["admin"]) as http:
        unknown = http.get("/nothing-here")
        invalid = http.post("/runs", json={"workflow": "../etc", "params": []})
        extra = http.post("/runs", json={"workflow": "billing-report", "surprise": 1})
        key = http.post("/runs", json={"workflow": "billing-report"}, headers={"Idempotency-Key": "x" * 201})
    for answer in (unknown, invalid, extra, key):
        assert set(answer.json()) == {"error"} and set(answer.json()["error"]) == {"code", "message", "details"}
    assert unknown.status_code == 404
    assert invalid.status_code == 422 and extra.status_code == 422 and key.status_code == 422


def test_the_openapi_document_is_3_1_and_documents_the_errors_of_every_keyed_route(world: World) -> None:
    with world.server.client() as http:
        doc = http.get("/openapi.json").json()
        health, ready = http.get("/healthz"), http.get("/readyz")
    assert doc["openapi"].startswith("3.1")
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            perm, _ = POLICY[op["operationId"]]
            if perm != Perm.PUBLIC:
                assert {"401", "403", "422"} <= set(op["responses"]), f"{method} {path}"
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["database"] == "ok"


def test_kinds_of_the_policy_are_known() -> None:
    assert {kind for _, kind in POLICY.values()} <= {GLOBAL, LIST, SELF, WORKFLOW}


def test_connections_accepted_on_the_api_socket_have_nagle_off_so_keep_alive_answers_do_not_wait() -> None:
    import asyncio
    import socket

    from miniflow.ops.api.listen import listen_socket

    async def accept_one() -> int:
        sock = listen_socket("127.0.0.1", 0)
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            value = await asyncio.wait_for(got, 10)
            writer.close()
        return value

    assert asyncio.run(accept_one()) != 0
    taken = listen_socket("127.0.0.1", 0)
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
        taken.listen()
        listen_socket("127.0.0.1", taken.getsockname()[1])
    taken.close()
