"""The scenario engine's HTML report in a real browser (Debian's chromium driven by Playwright, found
and launched as the web UI's browser tests do): it opens from a file with no console error, no page
error, no dialog and no request but its own; the failed case's expected and actual values are on
screen; each DAG has one node per step in its status colour; hostile step names are text. Needs no
RabbitMQ or Postgres; under CI=true a missing chromium fails the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miniflow.ops.testengine.html import write_html

from ..test_testengine_reports import HOSTILE, make_suite
from .test_ui_browser import ARGS, TIMEOUT_MS, chromium_path, playwright_api  # skips there without playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def report_page(browser: Any, tmp_path: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """The report of the test suite open in a new page, with the errors and the requests it made."""
    path = tmp_path / "report.html"
    write_html(make_suite(), path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

    def dialog(d: Any) -> None:  # an alert() would mean a script ran
        errors.append(f"dialog: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    try:
        yield page, errors, requests
    finally:
        context.close()
    assert requests == [path.as_uri()]


def test_the_report_opens_without_an_error_and_shows_the_failed_check_s_expected_and_actual(report_page):
    page, errors, _ = report_page
    expect = playwright_api.expect
    expect(page.locator("#totals")).to_contain_text("1 passed, 1 failed, 1 error, 1 skipped")
    failed = page.locator("section.case[data-outcome=failed]")
    first = failed.locator("tr.check-failed").first
    expect(first.locator("td.what")).to_have_text("run status")
    expect(first.locator("pre.expected")).to_be_visible()
    expect(first.locator("pre.expected")).to_have_text('"succeeded"')
    expect(first.locator("pre.actual")).to_be_visible()
    expect(first.locator("pre.actual")).to_have_text('"failed"')
    diff = failed.locator("tr.check-failed").nth(1).locator("pre.diff span")
    expect(diff).to_have_text(["-2", "+3"])
    assert not errors, errors


def test_each_dag_has_one_node_per_step_in_the_colour_of_its_status(report_page):
    page, errors, _ = report_page
    steps = make_suite().cases[1].steps
    nodes = page.locator("section.case[data-outcome=failed] svg.dag g.node")
    assert nodes.count() == len(steps)
    classes = nodes.evaluate_all("ns => ns.map(n => n.getAttribute('class'))")
    assert classes == ["node st-succeeded", "node st-failed", "node st-skipped"]
    fills = nodes.evaluate_all("ns => ns.map(n => getComputedStyle(n.querySelector('rect')).fill)")
    assert fills[0] != fills[1] != fills[2] and fills[0] == "rgb(216, 242, 226)"  # the UI's green
    passed = page.locator("section.case[data-outcome=passed] svg.dag g.node")
    assert passed.count() == 2
    assert not errors, errors


def test_hostile_step_names_and_errors_are_shown_as_text(report_page):
    page, errors, _ = report_page
    assert page.locator("script").count() == 0
    title = page.locator("section.case[data-outcome=failed] .case-id").inner_text()
    assert '</svg><script>alert("x")</script> [bold red]not markup[/] \\x1b[31mred\\x1b[0m' in title
    step_row = page.locator("section.case[data-outcome=failed] table.steps tr[data-step]").nth(1)
    assert HOSTILE.split(" ")[0] in step_row.locator("pre.error").inner_text()
    assert page.locator("svg").count() == 4  # no SVG closed early, none opened by data
    assert not errors, errors
