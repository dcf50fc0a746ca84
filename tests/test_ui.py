"""The web UI over real HTTP (uvicorn on a free port) on the embedded mode's SQLite database: sessions
(sign in, cookie flags, sign out, idle and absolute expiry, revoke, a restart), CSRF, roles on every
page and button, escaping of hostile text, and the security headers. What the UI does in a browser on
RabbitMQ and Postgres is tested in tests/integration/test_ui_browser.py."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from miniflow.coordinator import Scheduler, loads, parse_schedule
from miniflow.ops.api import create_app
from miniflow.ops.embedded import EmbeddedEngine
from miniflow.ops.settings import Settings
from miniflow.ops.ui.app import CSP, UI_POLICY
from miniflow.ops.ui.graph import NODE_H, NODE_W, layout
from miniflow.ops.ui.pages import timeline
from miniflow.ops.ui.pages_more import decode_raw, parse_value
from miniflow.persistence import Database, DeadLetterRow
from miniflow.persistence import repository as repo
from miniflow.persistence.keys import create_client_key
from miniflow.persistence.repository import audit as arepo
from miniflow.persistence.sealing import KeyRing, new_key_line
from miniflow.protocol.clock import utcnow
from miniflow.protocol.names import QueueNames

from .api_server import ApiServer

HOSTILE = '<img src=x onerror="alert(1)">\x1b[31m'
SECRET = "ui-secret-value-5555"
FAILING = """name: ui-report
params: {token: {secret: true}, note: {default: plain}, tags: {default: ['a', '" autofocus x="']}}
steps:
  - {name: load, task: test.echo}
  - {name: boom, task: test.boom, needs: [load]}
"""

MAPPED = """name: ui-map
steps:
  - {name: split, task: test.range, config: {n: 120}}
  - {name: each, task: test.element, needs: [split], config: {fail_items: [77]},
     map: {over: split.items, on_failure: continue}}
  - {name: after, task: test.echo, needs: [each]}
"""


@dataclass
class World:
    url: str
    db: str
    ring: KeyRing
    database: Database
    tokens: dict[str, str]
    run: str
    letter: int
    server: ApiServer
    mapped: str = ""  # a run of a map step over 120 elements, one failed (on_failure: continue)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("ui")
    url = f"sqlite:///{folder / 'ui.db'}"
    ring = KeyRing.parse(new_key_line("k1"), "test")
    with EmbeddedEngine(url, threads=2, keys=ring) as engine:
        engine.deploy(loads(FAILING))
        failed = engine.wait(engine.submit("ui-report", {"token": SECRET, "note": HOSTILE}), timeout=60)
        assert failed.status == "failed"
        engine.deploy(loads(MAPPED))
        mapped = engine.wait(engine.submit("ui-map", {}), timeout=60)
        assert mapped.status == "succeeded", mapped.error
    database = Database(url)
    tokens: dict[str, str] = {}
    with database.transaction() as conn:
        for role in ("viewer", "producer", "operator", "admin", "executor"):
            tokens[role], _ = create_client_key(conn, ring, f"ui-{role}", role)
        tokens["scoped"], _ = create_client_key(conn, ring, "ui-scoped", "admin", scope="other-*")
        spec = parse_schedule({"name": "ui-nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                               "params": {"token": SECRET}}, "ui-report", "test")
        Scheduler(QueueNames("miniflow"), keys=ring).add(conn, spec, utcnow())
        repo.insert_dead_letter(conn, DeadLetterRow(
            queue="miniflow.ingress", code="malformed", detail=HOSTILE, created_at=utcnow(), message_id="m-ui",
            raw=b'{"args": ["ui-report"], "kwargs": {"password": "hunter2", "url": "amqp://u:pw@h/"}}'))
        letter = repo.list_dead_letters(conn, 1)[0].id
    app = create_app(Settings(database_url=url, data_keys=ring), database=database, failure_limit=10_000)
    with ApiServer(app) as server:
        assert letter is not None
        yield World(server.url, url, ring, database, tokens, failed.run_id, letter, server, mapped.run_id)
    database.dispose()


def browser(w: World) -> httpx.Client:
    return httpx.Client(base_url=w.url, follow_redirects=False, timeout=30)


def sign_in(w: World, role: str, client: httpx.Client | None = None) -> httpx.Client:
    client = client or browser(w)
    form = client.get("/ui/login")
    pre = re.search(r'name="pre" value="([^"]+)"', form.text)
    assert pre is not None
    answer = client.post("/ui/login", data={"pre": pre.group(1), "next": "/ui/runs", "key": w.tokens[role]})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def test_pages_need_a_session_and_sign_in_sets_a_strict_http_only_cookie_whose_token_is_not_stored(world: World):
    client = browser(world)
    first = client.get("/ui/runs?status=failed")
    assert first.status_code == 303 and first.headers["location"] == "/ui/login?next=/ui/runs"
    assert client.post("/ui/runs/x/cancel", data={"csrf": "x"}).status_code == 401
    form = client.get("/ui/login")
    pre = re.search(r'name="pre" value="([^"]+)"', form.text)
    assert pre is not None
    answer = client.post("/ui/login", data={"pre": pre.group(1), "next": "/ui/workflows",
                                            "key": world.tokens["viewer"]})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/workflows"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("mf_session="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/ui/"} <= flags
    assert "secure" not in flags  # plain HTTP here; Secure when served over HTTPS
    token = cookie.split(";")[0].split("=", 1)[1]
    with world.database.connect() as conn:
        stored = conn.execute(text("SELECT token_hash, sealed_mac, key_name FROM ui_sessions")).all()
    assert stored and all(token not in str(row) for row in stored)
    assert all(world.tokens["viewer"] not in str(row) for row in stored)
    assert client.get("/ui/runs").status_code == 200


def test_a_wrong_key_a_key_that_cannot_read_and_a_forged_sign_in_form_are_refused(world: World):
    client = browser(world)
    pre = re.search(r'name="pre" value="([^"]+)"', client.get("/ui/login").text)
    assert pre is not None
    bad = client.post("/ui/login", data={"pre": pre.group(1), "key": "mf_0123456789ab_" + "A" * 43})
    assert bad.status_code == 401 and "valid API key" in bad.text
    assert not any(c.startswith("mf_session=") for c in bad.headers.get_list("set-cookie"))
    for role in ("producer", "executor"):
        pre = re.search(r'name="pre" value="([^"]+)"', client.get("/ui/login").text)
        assert pre is not None
        refused = client.post("/ui/login", data={"pre": pre.group(1), "key": world.tokens[role]})
        assert refused.status_code == 403 and "cannot read" in refused.text
    forged = browser(world).post("/ui/login", data={"pre": "guess", "key": world.tokens["admin"]})
    assert forged.status_code == 403 and "CSRF" in forged.text


def test_every_page_renders_for_an_admin_with_the_strict_security_headers(world: World):
    client = sign_in(world, "admin")
    pages = ["/ui/runs", "/ui/runs?status=failed&text=ui-rep", f"/ui/runs/{world.run}",
             f"/ui/runs/{world.run}/steps/boom", f"/ui/runs/{world.run}/live", "/ui/runs/rows?workflow=ui-*",
             "/ui/workflows", "/ui/workflows/ui-report", "/ui/workflows/ui-report?version=1", "/ui/schedules",
             "/ui/schedules/ui-nightly", "/ui/monitor", "/ui/dead-letters", f"/ui/dead-letters/{world.letter}",
             "/ui/keys", "/ui/audit", "/ui/audit?outcome=denied", "/ui/sessions"]
    for path in pages:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
        assert answer.headers["content-security-policy"] == CSP
        assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
        assert "<script>" not in answer.text and " on" + "click=" not in answer.text  # no inline script
        assert SECRET not in answer.text, path
    app: Any = world.server.server.config.app
    names = {r.name for r in app.routes if getattr(r, "name", "").startswith("ui_")}
    assert names - {"ui_static"} == set(UI_POLICY), "every page has a policy and every policy a page"


def test_hostile_text_is_escaped_and_secret_params_masked_on_every_page_that_shows_it(world: World):
    client = sign_in(world, "admin")
    for path in (f"/ui/runs/{world.run}", f"/ui/runs/{world.run}/steps/load", f"/ui/dead-letters/{world.letter}"):
        page = client.get(path).text
        assert "<img src=x" not in page, path
        assert "&lt;img src=x onerror=" in page, path
        assert SECRET not in page
    letter = client.get(f"/ui/dead-letters/{world.letter}").text
    assert "hunter2" not in html.unescape(letter.split('id="hex"')[0]) and "***" in letter
    schedule = client.get("/ui/schedules/ui-nightly").text
    assert "CET" in schedule or "CEST" in schedule  # next fire times in the schedule's zone


def test_a_viewer_sees_no_buttons_and_its_direct_posts_are_refused_and_audited(world: World):
    viewer = sign_in(world, "viewer")
    page = viewer.get(f"/ui/runs/{world.run}").text
    assert 'id="retry"' not in page and 'id="cancel"' not in page
    assert 'id="start-form"' not in viewer.get("/ui/workflows/ui-report").text
    assert viewer.get("/ui/keys").status_code == 403
    token = csrf_of(page)  # the sign-out form's: a valid token of this session
    refused = viewer.post(f"/ui/runs/{world.run}/retry", data={"csrf": token})
    assert refused.status_code == 403 and "operate" in refused.text
    start = viewer.post("/ui/workflows/ui-report/start", data={"csrf": token})
    assert start.status_code == 403
    with world.database.connect() as conn:
        denied = arepo.list_audit(conn, limit=20, outcome="denied")
    assert any(a.action == "ui_retry_run" and a.key_name == "ui-viewer" for a in denied)
    operator = sign_in(world, "operator")
    page = operator.get(f"/ui/runs/{world.run}").text
    assert 'id="retry"' in page and 'id="cancel"' not in page  # a failed run is retried, not cancelled


def test_a_form_post_without_the_session_csrf_token_is_refused(world: World):
    operator = sign_in(world, "operator")
    for data in ({}, {"csrf": "not-the-token"}):
        answer = operator.post(f"/ui/runs/{world.run}/retry", data=data)
        assert answer.status_code == 403 and "CSRF" in answer.text
    other = sign_in(world, "operator")  # another session's token is not this one's
    token = csrf_of(other.get("/ui/runs").text)
    assert operator.post(f"/ui/runs/{world.run}/retry", data={"csrf": token}).status_code == 403
    json_post = operator.post(f"/ui/runs/{world.run}/retry", json={"csrf": token})
    assert json_post.status_code == 415


def test_sign_out_ends_the_session_and_its_cookie_is_refused_afterwards(world: World):
    client = sign_in(world, "viewer")
    cookie = client.cookies.get("mf_session")
    token = csrf_of(client.get("/ui/runs").text)
    out = client.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["location"].startswith("/ui/login")
    replay = browser(world)
    replay.cookies.set("mf_session", cookie or "", path="/ui/")
    assert replay.get("/ui/runs").status_code == 303


def test_a_session_survives_a_restart_of_the_api_and_ends_when_an_admin_revokes_it(world: World):
    client = sign_in(world, "viewer")
    cookie = client.cookies.get("mf_session") or ""
    app = create_app(Settings(database_url=world.db, data_keys=world.ring), database=world.database)
    with ApiServer(app) as restarted:
        again = httpx.Client(base_url=restarted.url, follow_redirects=False)
        again.cookies.set("mf_session", cookie, path="/ui/")
        assert again.get("/ui/runs").status_code == 200
    admin = sign_in(world, "admin")
    sessions = admin.get("/ui/sessions").text
    with world.database.connect() as conn:
        mine = [r.id for r in repo.sessions.open_sessions(conn, utcnow()) if r.key_name == "ui-viewer"]
    assert mine and all(m in sessions for m in mine)
    for session_id in mine:
        ended = admin.post(f"/ui/sessions/{session_id}/revoke", data={"csrf": csrf_of(sessions)})
        assert ended.status_code == 303
    assert client.get("/ui/runs").status_code == 303


def test_idle_and_absolute_expiry_end_a_session(world: World):
    idle, old = sign_in(world, "viewer"), sign_in(world, "viewer")
    with world.database.transaction() as conn:
        rows = sorted(repo.sessions.open_sessions(conn, utcnow()), key=lambda r: r.created_at)[-2:]
        conn.execute(text("UPDATE ui_sessions SET last_seen = :t WHERE id = :i"),
                     {"t": utcnow() - timedelta(minutes=31), "i": rows[0].id})
        conn.execute(text("UPDATE ui_sessions SET expires_at = :t WHERE id = :i"),
                     {"t": utcnow() - timedelta(seconds=1), "i": rows[1].id})
    assert idle.get("/ui/runs").status_code == 303
    assert old.get("/ui/runs").status_code == 303


def test_revoking_a_key_in_the_ui_ends_its_sessions_at_once(world: World):
    with world.database.transaction() as conn:
        token, row = create_client_key(conn, world.ring, "ui-short-lived", "viewer")
    world.tokens["short"] = token
    victim = sign_in(world, "short")
    assert victim.get("/ui/runs").status_code == 200
    admin = sign_in(world, "admin")
    made = admin.post(f"/ui/keys/{row.kid}/revoke", data={"csrf": csrf_of(admin.get("/ui/keys").text)})
    assert made.status_code == 303
    assert victim.get("/ui/runs").status_code == 303
    assert row.kid not in admin.get("/ui/sessions").text  # its sessions are not listed as open


def test_an_admin_makes_a_key_in_the_ui_and_its_token_is_shown_once(world: World):
    admin = sign_in(world, "admin")
    page = admin.get("/ui/keys").text
    made = admin.post("/ui/keys", data={"csrf": csrf_of(page), "name": "ui-made", "role": "viewer", "expires": "1d"})
    assert made.status_code == 201
    token = re.search(r'id="new-token">(mf_[0-9a-f]{12}_[A-Za-z0-9_-]{43})<', made.text)
    assert token is not None
    assert token.group(1) not in admin.get("/ui/keys").text
    bad = admin.post("/ui/keys", data={"csrf": csrf_of(page), "name": "ui-bad", "role": "god"})
    assert bad.status_code == 422 and "role" in bad.text


def test_sign_in_redirects_only_inside_the_ui(world: World):
    client = browser(world)
    for target in ("//evil.example/x", "https://evil.example/", "/ui/\\evil", "/elsewhere"):
        pre = re.search(r'name="pre" value="([^"]+)"', client.get("/ui/login").text)
        assert pre is not None
        answer = client.post("/ui/login", data={"pre": pre.group(1), "next": target, "key": world.tokens["viewer"]})
        assert answer.headers["location"] == "/ui/runs", target


def test_the_pages_load_nothing_from_outside_and_the_assets_ship_in_the_package(world: World):
    client = sign_in(world, "admin")
    page = client.get(f"/ui/runs/{world.run}").text
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert assets and all(a.startswith(("/ui/", "data:")) for a in assets), assets
    for asset in ("/ui/static/ui.js", "/ui/static/ui.css"):
        answer = client.get(asset)
        assert answer.status_code == 200 and answer.headers["x-content-type-options"] == "nosniff"
    folder = Path(__file__).parent.parent / "ops" / "ui" / "templates"
    for template in folder.glob("*.html"):
        assert "<script>" not in template.read_text() and "http://" not in template.read_text(), template


def test_bad_filters_and_unknown_things_get_clear_errors(world: World):
    client = sign_in(world, "viewer")
    assert client.get("/ui/runs?status=exploded").status_code == 422
    since = client.get("/ui/runs?since=yesterday")
    assert since.status_code == 422 and "since" in since.text
    missing = client.get("/ui/runs/ffffffff-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "no run" in missing.text
    assert client.get(f"/ui/runs/{world.run}/steps/nope").status_code == 404
    assert client.get("/ui/dead-letters/abc").status_code == 404
    assert client.get("/ui/schedules/none-such").status_code == 404


def test_the_run_list_filters_by_text_status_and_workflow_and_pages_with_a_cursor(world: World):
    client = sign_in(world, "viewer")
    assert world.run[:8] in client.get(f"/ui/runs?text={world.run[:8]}").text
    assert world.run[:8] not in client.get("/ui/runs?status=succeeded").text
    assert world.run[:8] in client.get("/ui/runs?workflow=ui-*&text=INPUT IS BROKEN").text
    assert world.run[:8] not in client.get("/ui/runs?workflow=other").text
    assert "data-refresh=" in client.get("/ui/runs?status=failed").text
    assert "data-refresh=" not in client.get("/ui/runs?text=boom").text  # a text search scans: not every 3 s


def test_the_dag_layout_puts_every_step_below_what_it_needs_without_overlaps():
    steps = ["extract", "clean", "join", "left", "right", "load", "alone"]
    edges = [("extract", "clean"), ("clean", "left"), ("clean", "right"), ("left", "join"), ("right", "join"),
             ("join", "load")]
    drawn = layout(steps, edges)
    assert drawn is not None
    at = {n.id: n for n in drawn.nodes}
    for a, b in edges:
        assert at[a].y + NODE_H <= at[b].y, (a, b)
    boxes = list(at.values())
    for i, p in enumerate(boxes):
        for q in boxes[i + 1:]:
            assert abs(p.x - q.x) >= NODE_W or abs(p.y - q.y) >= NODE_H, (p, q)
    assert all(n.x >= 0 and n.y >= 0 and n.x + NODE_W <= drawn.width and n.y + NODE_H <= drawn.height
               for n in boxes)
    assert len(drawn.edges) == len(edges) and all(d.startswith("M") for _, _, d in drawn.edges)
    assert layout([f"s{i}" for i in range(401)], []) is None


def test_a_form_value_is_json_when_it_reads_as_json_and_text_otherwise():
    assert parse_value("5") == 5 and parse_value("true") is True and parse_value("[1, 2]") == [1, 2]
    assert parse_value("EU") == "EU" and parse_value("5 apples") == "5 apples" and parse_value('{"a"') == '{"a"'


def test_rejected_bytes_are_decoded_with_secret_named_fields_and_url_passwords_masked():
    raw = b'{"password": "p1", "nested": {"api_key": "k2"}, "dsn": "postgresql://me:pw3@db/x"}'
    shown = decode_raw(raw.hex())
    assert shown == {"password": "***", "nested": {"api_key": "***"}, "dsn": "postgresql://me:***@db/x"}
    assert decode_raw(b"\xc1\xff not anything".hex()) is None


def test_the_timeline_splits_each_attempt_into_its_wait_and_its_execution(world: World):
    with world.database.connect() as conn:
        run = repo.get_run(conn, world.run)
        steps = repo.get_steps(conn, world.run)
        attempts = repo.get_attempts(conn, world.run)
        workflow = loads(FAILING)
    assert run is not None
    drawn = timeline(run, steps, attempts, workflow, utcnow())
    kinds = {row["step"]: [b["kind"] for b in row["bars"]] for row in drawn["rows"]}
    assert kinds["load"][-1] == "ok" and kinds["boom"][-1] == "fail"
    for row in drawn["rows"]:
        assert all(0 <= b["x"] <= drawn["width"] and b["w"] >= 1 for b in row["bars"])


def test_cookies_are_secure_behind_a_tls_proxy_when_asked(world: World):
    app = create_app(Settings(database_url=world.db, data_keys=world.ring), database=world.database,
                     secure_cookies=True)
    with ApiServer(app) as server:
        client = httpx.Client(base_url=server.url, follow_redirects=False)
        form = client.get("/ui/login")
        assert "secure" in form.headers["set-cookie"].lower()
        pre = re.search(r'name="pre" value="([^"]+)"', form.text)
        assert pre is not None
        client.cookies.set("mf_signin", pre.group(1), path="/ui/")  # a Secure cookie is not sent over HTTP
        answer = client.post("/ui/login", data={"pre": pre.group(1), "key": world.tokens["viewer"]})
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("mf_session="))
        assert "secure" in {p.strip().lower() for p in cookie.split(";")}


def test_a_scoped_key_sees_only_its_workflows_and_no_global_page(world: World):
    scoped = sign_in(world, "scoped")  # an admin key scoped to other-*
    for path in ("/ui/monitor", "/ui/dead-letters", f"/ui/dead-letters/{world.letter}", "/ui/keys", "/ui/audit",
                 "/ui/sessions"):
        answer = scoped.get(path)
        assert answer.status_code == 403 and "scoped" in answer.text, path
    made = scoped.post("/ui/keys", data={"csrf": csrf_of(scoped.get("/ui/runs").text), "name": "escape",
                                         "role": "admin"})
    assert made.status_code == 403
    assert world.run[:8] not in scoped.get("/ui/runs").text
    assert scoped.get(f"/ui/runs/{world.run}").status_code == 403
    assert scoped.get("/ui/workflows/ui-report").status_code == 403


def test_a_default_that_is_a_list_fills_the_start_form_as_json_without_breaking_out_of_the_attribute(world: World):
    page = sign_in(world, "operator").get("/ui/workflows/ui-report").text
    field = re.search(r'<input name="param.tags"[^>]*>', page)
    assert field is not None
    assert "autofocus" not in field.group(0).replace("&#34;", "").split('value="')[0]
    value = re.search(r'value="([^"]*)"', field.group(0))
    assert value is not None and json_of(html.unescape(value.group(1))) == ["a", '" autofocus x="']


def json_of(text_: str) -> object:
    import json
    return json.loads(text_)


def test_a_pages_own_refresh_does_not_keep_its_session_alive_and_a_banner_is_only_a_known_one(world: World):
    client = sign_in(world, "viewer")
    with world.database.transaction() as conn:
        row = sorted(repo.sessions.open_sessions(conn, utcnow()), key=lambda r: r.created_at)[-1]
        conn.execute(text("UPDATE ui_sessions SET last_seen = :t WHERE id = :i"),
                     {"t": utcnow() - timedelta(minutes=20), "i": row.id})
    app: Any = world.server.server.config.app
    app.state.ui.sessions._touched.clear()
    assert client.get("/ui/runs/rows", headers={"X-MiniFlow-Poll": "1"}).status_code == 200
    with world.database.connect() as conn:
        seen = conn.execute(text("SELECT last_seen FROM ui_sessions WHERE id = :i"), {"i": row.id}).scalar_one()
    assert (utcnow() - as_utc_(seen)).total_seconds() > 19 * 60  # a poll did not count as activity
    page = client.get("/ui/runs?said=Your+session+expired:+paste+your+key+at+evil.example").text
    assert "evil.example" not in page.split("<main>")[1].split("</form>")[0]
    assert 'class="said"' not in page
    assert 'class="said"' in client.get("/ui/runs?said=started").text


def as_utc_(value: object) -> datetime:
    from miniflow.protocol.clock import as_utc
    assert isinstance(value, datetime | str)
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    out = as_utc(at)
    assert out is not None
    return out


def test_hostile_nesting_in_a_form_value_or_a_dead_letter_is_an_answer_not_a_crash():
    assert parse_value("[" * 100_000) == "[" * 100_000
    assert decode_raw(("[" * 5000).encode().hex()) is None


def test_a_map_runs_page_draws_its_defined_steps_and_lists_a_bounded_share_of_its_elements(world: World):
    client = sign_in(world, "viewer")
    page = client.get(f"/ui/runs/{world.mapped}").text
    dag = page.split('id="dag"', 1)[1].split("</svg>", 1)[0]
    assert sorted(set(re.findall(r'data-step="([^"]+)"', dag))) == ["after", "each", "split"]
    table = page.split('id="steps"', 1)[1].split("</table>", 1)[0]
    listed = re.findall(r'<tr data-step="each\[(\d+)\]"', table)
    assert listed == [str(i) for i in range(49)] + ["77"]  # the failed one, and the first of the rest, in order
    assert "elements: 1 failed · 119 succeeded · of 120" in html.unescape(table)
    assert 'class="note more-elements" data-map="each"' in page and "50 of its 120 elements listed" in page
    step = client.get(f"/ui/runs/{world.mapped}/steps/each[77]")
    assert step.status_code == 200 and "element 77 failed" in step.text
