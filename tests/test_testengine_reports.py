"""The scenario engine's reports: the terminal summary, JUnit XML (checked against the Jenkins xunit
plugin's schema), the self-contained HTML file and the JSON data; every one shows hostile text from a
step or a scenario as text."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from rich.console import Console

from miniflow.ops.terminal import SafeConsole
from miniflow.ops.testengine.html import render_html, write_html
from miniflow.ops.testengine.junit import junit_tree, write_junit
from miniflow.ops.testengine.report import summary, to_json, totals_line
from miniflow.ops.testengine.results import (
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    AttemptOutcome,
    CaseResult,
    Check,
    StepOutcome,
    SuiteResult,
)

SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"
# Markup, a closing SVG tag, a script, ANSI colours, NUL, a bidirectional override, a lone surrogate.
HOSTILE = '</svg><script>alert("x")</script> [bold red]not markup[/] \x1b[31mred\x1b[0m \x00 \u202e \ud800'
ETL, OTHER = "scenarios/etl.yaml", "scenarios/other.yaml"
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def attempt(n: int, status: str, start: float, end: float | None, error: str | None = None) -> AttemptOutcome:
    return AttemptOutcome(attempt=n, status=status, error_type="ValueError" if error else None, error=error,
                          node="node-1", started_at=start, finished_at=end)


def case(name: str, source: str, outcome: str, **fields: Any) -> CaseResult:
    fields.setdefault("mode", "embedded")
    return CaseResult(id=f"{source}::{name}", scenario=name, case=None, source=source, line=3, outcome=outcome,
                      **fields)


def make_suite() -> SuiteResult:
    """Four cases in two files: passed and failed in one, errored and skipped in the other."""
    passed = case("etl happy", ETL, PASSED, tags=["smoke"], workflow="etl", wall_s=0.25, virtual_s=90.0,
                  run_id="r-1", run_status="succeeded", runs=1, checks=[Check("run status", True, "succeeded",
                                                                              "succeeded")],
                  steps=[StepOutcome("extract", "succeeded", attempts=[attempt(1, "succeeded", 0.0, 30.0)],
                                     output={"rows": 3, "token": "***"}),
                         StepOutcome("load", "succeeded", needs=["extract"], stubbed=True,
                                     attempts=[attempt(1, "succeeded", 30.0, 90.0)], output=None)])
    failed = case(f"etl retries[{HOSTILE}]", ETL, FAILED, tags=["retries", HOSTILE], workflow="etl", wall_s=0.5,
                  virtual_s=120.0, run_id="r-2", run_status="failed", run_error=f"step failed: {HOSTILE}", runs=1,
                  steps=[StepOutcome("extract", "succeeded", attempts=[attempt(1, "succeeded", 0.0, 10.0)],
                                     output={"rows": 3}),
                         StepOutcome(HOSTILE, "failed", needs=["extract"],
                                     attempts=[attempt(1, "failed", 10.0, 40.0, HOSTILE),
                                               attempt(2, "failed", 70.0, 120.0, HOSTILE)]),
                         StepOutcome("load", "skipped", needs=[HOSTILE])],
                  checks=[Check("run status", False, "succeeded", "failed"),
                          Check(f"step {HOSTILE} attempts", False, 2, 3, diff="-2\n+3"),
                          Check("output of extract", False, {"rows": 4, "note": HOSTILE}, {"rows": 3}),
                          Check("step extract succeeded", True, "succeeded", "succeeded")])
    errored = case("broken", OTHER, ERROR, reason=f"the workflow cannot be loaded: {HOSTILE}", wall_s=0.01)
    skipped = case("needs services", OTHER, SKIPPED, reason="needs RabbitMQ (against mode)", mode="against")
    return SuiteResult(cases=[passed, failed, errored, skipped], wall_s=1.25, mode="embedded")


# -- JUnit ------------------------------------------------------------------------------------------
def test_the_junit_report_validates_against_the_jenkins_xunit_schema(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(make_suite(), path)
    xmlschema.XMLSchema(SCHEMA).validate(str(path))
    write_junit(SuiteResult([], 0.0, "embedded"), tmp_path / "empty.xml")
    xmlschema.XMLSchema(SCHEMA).validate(str(tmp_path / "empty.xml"))


def test_the_schema_check_refuses_a_report_that_breaks_the_schema() -> None:
    schema = xmlschema.XMLSchema(SCHEMA)
    root = junit_tree(make_suite())
    schema.validate(root)
    del root.find("testsuite/testcase").attrib["name"]  # type: ignore[union-attr]
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema.validate(root)


def test_the_junit_report_counts_each_file_s_cases_by_outcome(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(make_suite(), path)
    root = ET.parse(path).getroot()
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("errors"), root.get("time")) == \
        ("testsuites", "4", "1", "1", "1.250")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == [ETL, OTHER]
    counts = {name: tuple(s.get(k) for k in ("tests", "failures", "errors", "skipped")) for name, s in suites.items()}
    assert counts == {ETL: ("2", "1", "0", "0"), OTHER: ("2", "0", "1", "1")}
    assert suites[ETL].get("time") == "0.750"
    cases = root.findall("testsuite/testcase")
    assert [c.get("classname") for c in cases] == [ETL, ETL, OTHER, OTHER]
    assert cases[0].get("name") == f"{ETL}::etl happy" and cases[0].get("time") == "0.250"
    assert [[child.tag for child in c if child.tag != "system-out"] for c in cases] == \
        [[], ["failure"], ["error"], ["skipped"]]


def test_a_failed_case_s_failure_gives_each_failed_check_s_expected_actual_and_diff() -> None:
    failure = junit_tree(make_suite()).find("testsuite/testcase/failure")
    assert failure is not None and failure.get("type") == "AssertionFailed"
    assert (failure.get("message") or "").startswith("3 checks failed: run status; step ")
    text = failure.text or ""
    assert 'run status\n  expected: "succeeded"\n  actual:   "failed"' in text
    assert "  diff:\n    -2\n    +3" in text
    assert '-  "rows": 4,' in text and '+  "rows": 3' in text  # a diff made for multi-line values
    assert "step extract succeeded" not in text  # a check that held


def test_errors_and_skips_carry_their_reason_and_the_suite_its_mode_and_tags() -> None:
    root = junit_tree(make_suite())
    error = root.find(f"testsuite[@name='{OTHER}']/testcase/error")
    skipped = root.find(f"testsuite[@name='{OTHER}']/testcase/skipped")
    assert error is not None and (error.get("message") or "").startswith("the workflow cannot be loaded: </svg>")
    assert skipped is not None and skipped.get("message") == "needs RabbitMQ (against mode)"
    props = {p.get("name"): p.get("value") for p in root.findall(f"testsuite[@name='{ETL}']/properties/property")}
    assert props["mode"] == "embedded" and props[f"tags[{ETL}::etl happy]"] == "smoke"
    other = {p.get("name"): p.get("value") for p in root.findall(f"testsuite[@name='{OTHER}']/properties/property")}
    assert other == {"mode": "against,embedded"}


def test_no_character_that_xml_forbids_reaches_the_junit_file(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(make_suite(), path)
    text = path.read_bytes().decode("utf-8")
    assert not NOT_XML.search(text), NOT_XML.findall(text)
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[31mred\\x1b[0m" in text and "\\x00" in text and "\\ud800" in text  # shown, not dropped
    assert ET.parse(path).getroot().find("testsuite/testcase/failure") is not None


# -- the terminal -----------------------------------------------------------------------------------
@pytest.mark.parametrize("console_class", [SafeConsole, Console])
def test_the_summary_shows_hostile_text_as_text_on_any_console(console_class: type[Console]) -> None:
    out = io.StringIO()
    suite = make_suite()
    suite.cases = [c for c in suite.cases if c.outcome != FAILED] + [_without_surrogates(suite.cases[1])]
    summary(suite, console_class(file=out, width=400, color_system=None, markup=True))
    text = out.getvalue()
    assert "[bold red]not markup[/]" in text  # not interpreted as rich markup
    assert "\\x1b[31mred\\x1b[0m" in text and "\\u202e" in text and "\\x00" in text
    assert "\x1b" not in text and "\x00" not in text and "\u202e" not in text


def _without_surrogates(case: CaseResult) -> CaseResult:
    """The case as JSON would give it with the lone surrogate (a terminal cannot write one) removed."""
    return CaseResult.from_json(json.loads(json.dumps(case.to_json()).replace("\\ud800", "")))


def test_the_summary_gives_each_failed_check_and_the_totals_line() -> None:
    out = io.StringIO()
    suite = make_suite()
    suite.cases = [_without_surrogates(c) for c in suite.cases]
    summary(suite, SafeConsole(file=out, width=400, color_system=None))
    text = out.getvalue()
    assert text.rstrip().endswith("1 passed, 1 failed, 1 error, 1 skipped in 1.25 s (embedded)")
    assert '✗ run status\n    expected: "succeeded"\n    actual:   "failed"' in text
    assert "    diff:\n      -2\n      +3" in text
    assert "FAILED" in text and "ERROR" in text and "SKIPPED" in text and "needs RabbitMQ" in text
    assert totals_line(SuiteResult([], 0.5, "against")) == "no cases in 0.50 s (against)"


# -- HTML -------------------------------------------------------------------------------------------
class Elements(HTMLParser):
    """The start tags of a document as (tag, attributes), and its closing tags."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.ends: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.ends.append(tag)


def test_the_html_report_shows_hostile_text_as_text(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_html(make_suite(), path)
    html = path.read_text(encoding="utf-8")
    found = Elements(html)
    assert "script" not in [tag for tag, _ in found.starts]
    assert sum(1 for tag, _ in found.starts if tag == "svg") == found.ends.count("svg") == 4  # 2 DAGs, 2 timelines
    assert "&lt;/svg&gt;&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "\x1b" not in html and "\x00" not in html and "\u202e" not in html
    assert "\\x1b[31mred\\x1b[0m" in html and "\\ud800" in html


def test_the_html_report_fetches_nothing_and_runs_no_script() -> None:
    html = render_html(make_suite())
    assert "http://" not in html and "https://" not in html and "<link" not in html and "src=" not in html
    assert set(re.findall(r"url\(([^)]*)\)", html)) == {"#arrow-1", "#arrow-2"}
    assert "default-src 'none'" in html


def test_each_case_s_dag_has_one_node_per_step_coloured_by_its_status() -> None:
    suite = make_suite()
    found = Elements(render_html(suite))
    nodes = [a for tag, a in found.starts if tag == "g" and "node" in (a.get("class") or "").split()]
    assert [(n["data-step"], n["class"]) for n in nodes] == [
        ("extract", "node st-succeeded"), ("load", "node st-succeeded stubbed"),
        ("extract", "node st-succeeded"), (HOSTILE.replace("\x1b", "\\x1b").replace("\x00", "\\x00")
                                           .replace("\u202e", "\\u202e"), "node st-failed"),
        ("load", "node st-skipped")]
    edges = [a for tag, a in found.starts if tag == "path" and a.get("class") == "edge"]
    assert len(edges) == 3


def test_the_timeline_draws_a_bar_per_attempt_in_virtual_seconds_in_embedded_mode() -> None:
    html = render_html(make_suite())
    found = Elements(html)
    bars = [a["class"] for tag, a in found.starts if tag == "rect" and (a.get("class") or "").startswith("bar")]
    assert bars == ["bar ok", "bar ok", "bar ok", "bar fail", "bar fail"]
    assert html.count("virtual seconds after the run was created") == 2


def test_failed_checks_in_html_give_expected_actual_and_diff_lines() -> None:
    html = render_html(make_suite())
    assert '<pre class="expected">&#34;succeeded&#34;</pre>' in html
    assert '<pre class="actual">&#34;failed&#34;</pre>' in html
    assert '<span class="del">-2</span><span class="add">+3</span>' in html
    assert '&#34;token&#34;: &#34;***&#34;' in html  # outputs as JSON, as masked


def test_a_workflow_too_big_to_draw_gets_a_note_instead_of_a_graph() -> None:
    steps = [StepOutcome(f"s{i}", "succeeded") for i in range(401)]
    html = render_html(SuiteResult([case("big", ETL, PASSED, steps=steps)], 1.0, "embedded"))
    assert 'class="dag"' not in html and "up to 400 steps" in html


# -- JSON -------------------------------------------------------------------------------------------
def test_the_json_report_round_trips_through_case_result_from_json() -> None:
    suite = make_suite()
    data = json.loads(json.dumps(to_json(suite)))
    assert data["schema_version"] == 1 and data["exit_code"] == 1 and data["mode"] == "embedded"
    assert data["totals"] == {"cases": 4, PASSED: 1, FAILED: 1, ERROR: 1, SKIPPED: 1}
    assert [CaseResult.from_json(c) for c in data["cases"]] == suite.cases
