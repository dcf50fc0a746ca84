"""The web UI in a real browser (Debian's chromium driven by Playwright) against `miniflow api`, the
coordinator and an executor as their own processes on the real RabbitMQ and Postgres: sign in, start
a run from the workflow page and watch its DAG turn green without a reload, open a failed step's
error, retry the failed run, cancel a long one, a viewer without buttons whose direct POST is
refused, a CSRF-less post refused, sign out. Every page must render without a console error. The
screenshots of the main pages go to docs/screenshots (MINIFLOW_SCREENSHOTS moves them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miniflow.ops.processes import ApiProcess

from .conftest import ROOT, WorkerProcess, miniflow, own_namespace

playwright_api = pytest.importorskip("playwright.sync_api")

WORKFLOWS = {
    "ui-chain": "name: ui-chain\ndescription: four steps, two in parallel\n"
                "params: {who: {required: true, description: who asked}, token: {secret: true}}\n"
                "steps:\n  - {name: fetch, task: test.sleep, config: {seconds: 3}}\n"
                "  - {name: parse, task: test.echo, needs: [fetch]}\n"
                "  - {name: score, task: test.sleep, needs: [fetch], config: {seconds: 0.5}}\n"
                "  - {name: publish, task: test.echo, needs: [parse, score]}\n",
    "ui-flaky": "name: ui-flaky\nsteps:\n  - {name: once, task: test.flaky, config: {fail_times: 1}}\n"
                "  - {name: after, task: test.echo, needs: [once]}\n",
    "ui-slow": "name: ui-slow\nsteps:\n  - {name: nap, task: test.sleep, config: {seconds: 120}}\n"
               "  - {name: after, task: test.echo, needs: [nap]}\n",
}
SHOTS = Path(os.environ.get("MINIFLOW_SCREENSHOTS", str(ROOT / "docs" / "screenshots")))
TIMEOUT_MS = 60_000
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    found = os.environ.get("MINIFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "no chromium for the browser tests (make install puts Debian's chromium on this machine)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def ui(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with own_namespace(env, "ui") as own:
        yield from _ui(own, tmp_path_factory)


def _ui(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ui")
    for name, source in WORKFLOWS.items():
        (folder / f"{name}.yaml").write_text(source)
        deployed = miniflow(env, "deploy", str(folder / f"{name}.yaml"))
        assert deployed.returncode == 0, deployed.stderr
    tokens = {}
    for role in ("viewer", "operator"):
        made = miniflow(env, "keys", "create", "--name", f"ui-{role}-{uuid.uuid4().hex[:6]}", "--role", role, "--json")
        assert made.returncode == 0, made.stderr
        tokens[role] = json.loads(made.stdout)["token"]
    workers = [
        WorkerProcess(env, ["--role", "coordinator", "--role", "results", "--threads", "4"],
                      folder / "coord.log"),
        WorkerProcess(env, ["--steps", "tests.steps_for_tests", "--threads", "4"], folder / "exec.log"),
    ]
    servers = [ApiProcess(env, ["--port", "0"], folder / "api.log", cwd=ROOT)]

    def restart() -> str:
        """Stop `miniflow api` and start a new one (on a new port): its URL."""
        servers[-1].stop()
        servers.append(ApiProcess(env, ["--port", "0"], folder / f"api-{len(servers)}.log", cwd=ROOT))
        servers[-1].wait_ready()
        return str(servers[-1].url)

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            for w in [*workers, *servers]:
                w.wait_ready()
            yield {"url": servers[0].url, "tokens": tokens, "browser": browser, "restart": restart}
        finally:
            browser.close()
            for w in [*servers, *workers]:
                w.stop()


class Session:
    """A browser context signed in with one role's key, and the console errors of its pages."""

    def __init__(self, ui: dict[str, Any], role: str) -> None:
        self.url = ui["url"]
        self.context = ui["browser"].new_context(viewport={"width": 1280, "height": 860})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page = self.new_page()
        self.page.goto(self.url + "/ui/runs")
        assert "/ui/login" in self.page.url  # no session yet
        self.page.fill("#key", ui["tokens"][role])
        self.page.click("#sign-in")
        self.page.wait_for_url(re.compile(r".*/ui/runs$"))

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        return page

    def csrf(self) -> str:
        token = self.page.get_attribute('input[name="csrf"]', "value")
        assert token
        return str(token)

    def start(self, workflow: str, **params: str) -> str:
        self.page.goto(f"{self.url}/ui/workflows/{workflow}")
        for name, value in params.items():
            self.page.fill(f'[data-param="{name}"]', value)
        self.page.click("#start")
        self.page.wait_for_url(re.compile(r".*/ui/runs/[0-9a-f-]{36}(\?.*)?$"))
        return str(self.page.url).split("/ui/runs/")[1].split("?")[0]

    def wait_status(self, status: str) -> None:
        self.page.wait_for_function("s => document.querySelector('#run-status')?.textContent.trim() === s",
                                    arg=status, timeout=TIMEOUT_MS)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_run_started_from_its_workflow_page_turns_green_node_by_node_without_a_reload(ui):
    me = Session(ui, "operator")
    try:
        me.page.goto(me.url + "/ui/workflows/ui-chain")
        assert me.page.get_attribute('[data-param="token"]', "type") == "password"
        shot(me.page, "workflow")
        run_id = me.start("ui-chain", who="the browser test", token="ui-secret-4242")
        me.page.evaluate("window.__sameDocument = true")
        first = me.page.eval_on_selector_all("#dag .node", "nodes => nodes.map(n => n.getAttribute('class'))")
        assert len(first) == 4 and not all("st-succeeded" in c for c in first), first
        me.page.wait_for_function("() => [...document.querySelectorAll('#dag .node')].every("
                                  "n => n.classList.contains('st-succeeded'))", timeout=TIMEOUT_MS)
        me.wait_status("succeeded")
        assert me.page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        assert "ui-secret-4242" not in me.page.content()
        assert me.page.locator("#timeline .bar.ok").count() == 4
        shot(me.page, "run")
        me.page.goto(me.url + "/ui/runs")
        assert me.page.locator(f'tr[data-run="{run_id}"]').count() == 1
        shot(me.page, "runs")
        me.page.goto(me.url + "/ui/monitor")
        assert me.page.locator("#workers tbody tr").count() >= 2
        shot(me.page, "monitor")
    finally:
        me.close()


def test_a_failed_steps_error_opens_from_its_node_and_the_failed_run_is_retried_to_success(ui):
    me = Session(ui, "operator")
    try:
        run_id = me.start("ui-flaky")
        me.wait_status("failed")
        me.page.click('#dag .node[data-step="once"]')
        me.page.wait_for_url(re.compile(r".*/steps/once$"))
        assert "flaky failure 1" in me.page.inner_text("#step-error")
        shot(me.page, "step")
        me.page.goto(f"{me.url}/ui/runs/{run_id}")
        me.page.click("#retry")
        me.page.wait_for_url(re.compile(r".*said=.*"))
        me.wait_status("succeeded")
        assert me.page.locator("#dag .node.st-succeeded").count() == 2
    finally:
        me.close()


def test_a_long_run_appears_in_the_live_list_and_is_cancelled_from_its_page(ui):
    me = Session(ui, "operator")
    try:
        listing = me.new_page()
        listing.goto(me.url + "/ui/runs")
        listing.evaluate("window.__sameDocument = true")
        run_id = me.start("ui-slow")
        listing.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=TIMEOUT_MS)
        assert listing.evaluate("window.__sameDocument") is True
        me.page.wait_for_function("() => document.querySelector('#dag .node[data-step=\"nap\"]')"
                                  ".classList.contains('st-running')", timeout=TIMEOUT_MS)
        me.page.goto(f"{me.url}/ui/runs/{run_id}/steps/after")  # pending: the page says why it waits
        assert "waits for the step(s) it needs: nap" in me.page.inner_text("#why")
        me.page.goto(f"{me.url}/ui/runs/{run_id}")
        me.page.once("dialog", lambda dialog: dialog.accept())
        me.page.click("#cancel")
        me.page.wait_for_url(re.compile(r".*said=.*"))
        me.wait_status("cancelled")
        assert me.page.locator("#cancel").count() == 0 and me.page.locator("#retry").count() == 1
        ui["cancelled"] = run_id
    finally:
        me.close()


def test_a_viewer_sees_no_button_and_its_direct_post_is_refused(ui):
    run_id = ui.get("cancelled")
    assert run_id, "the cancel test runs first and leaves a cancelled run"
    viewer = Session(ui, "viewer")
    try:
        viewer.page.goto(f"{viewer.url}/ui/runs/{run_id}")
        assert viewer.page.locator("#retry").count() == 0 and viewer.page.locator("#cancel").count() == 0
        token = viewer.csrf()
        answer = viewer.page.request.post(f"{viewer.url}/ui/runs/{run_id}/retry", form={"csrf": token})
        assert answer.status == 403 and "may not" in answer.text()
        viewer.page.goto(viewer.url + "/ui/workflows/ui-chain")
        assert viewer.page.locator("#start-form").count() == 0
        viewer.page.reload()
        viewer.page.goto(f"{viewer.url}/ui/runs/{run_id}")
        assert viewer.page.inner_text("#run-status").strip() == "cancelled"  # still: nothing was retried
    finally:
        viewer.close()


def test_a_csrf_less_post_is_refused_and_after_sign_out_every_page_asks_to_sign_in(ui):
    me = Session(ui, "operator")
    try:
        run_id = ui.get("cancelled")
        answer = me.page.request.post(f"{me.url}/ui/runs/{run_id}/retry", form={"reason": "no token"})
        assert answer.status == 403 and "CSRF" in answer.text()
        me.page.click("#sign-out")
        me.page.wait_for_url(re.compile(r".*/ui/login.*"))
        me.page.goto(me.url + "/ui/runs")
        assert "/ui/login" in me.page.url
        shot(me.page, "sign-in")
        refused = me.page.request.post(f"{me.url}/ui/runs/{run_id}/retry", form={"csrf": "x"})
        assert refused.status == 401
    finally:
        me.close()


def test_a_session_outlives_a_restart_of_the_api_it_was_opened_on(ui):
    me = Session(ui, "viewer")
    try:
        # Leave the page first: its live refresh would otherwise poll the old port while the API
        # is down and log ERR_CONNECTION_REFUSED, which is the restart, not a fault of the UI.
        me.page.goto("about:blank")
        me.url = ui["url"] = ui["restart"]()  # cookies belong to the host, not the port
        me.page.goto(me.url + "/ui/runs")
        assert me.page.url.endswith("/ui/runs"), "the session did not survive the restart"
        assert me.page.locator("#run-rows tr[data-run]").count() >= 3
    finally:
        me.close()
