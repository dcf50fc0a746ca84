"""A suite's results as JUnit XML, the format CI servers read (Jenkins, GitLab, GitHub actions).

The document follows the JUnit schema of the Jenkins xunit plugin (junit-10.xsd, a copy is in
tests/data): ``testsuites`` holds one ``testsuite`` per scenario file, which holds one ``testcase``
per case (``classname`` the scenario file, ``name`` the case id). A failed case has a ``failure``
of type ``AssertionFailed`` whose text gives each failed check's expected and actual values and
their diff; an errored case has an ``error``; a skipped one a ``skipped`` with its reason. Times are
seconds. That schema allows ``properties`` on a ``testsuite`` only, so a file's suite carries the
mode and each case's tags (``tags[<case id>]``).

XML 1.0 cannot hold most control characters (a step's error may have ANSI colours): every text and
attribute has them, and anything else XML forbids, replaced by a visible escape such as ``\\x1b``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ..terminal import escape_controls
from .report import diff_of, show_value
from .results import ERROR, FAILED, SKIPPED, CaseResult, SuiteResult

SUITES_NAME = "miniflow scenarios"
# What escape_controls leaves that XML 1.0 still forbids: lone surrogates and U+FFFE, U+FFFF.
NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def xml_text(value: object) -> str:
    """``value`` as text that XML 1.0 can hold (forbidden characters become visible escapes)."""
    return NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", escape_controls(str(value)))


def seconds(value: float | None) -> str:
    return f"{max(0.0, value or 0.0):.3f}"


def write_junit(suite: SuiteResult, path: str | Path) -> None:
    """Write the suite's JUnit XML (UTF-8, with an XML declaration) to ``path``."""
    tree = ET.ElementTree(junit_tree(suite))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def junit_tree(suite: SuiteResult) -> ET.Element:
    """The ``testsuites`` element of the suite."""
    by_file: dict[str, list[CaseResult]] = {}
    for case in suite.cases:
        by_file.setdefault(case.source, []).append(case)
    root = ET.Element("testsuites", _attrs(name=SUITES_NAME, tests=len(suite.cases), failures=suite.count(FAILED),
                                           errors=suite.count(ERROR), time=seconds(suite.wall_s)))
    for source, cases in by_file.items():
        root.append(_testsuite(source, cases, suite.mode))
    return root


def _attrs(**values: object) -> dict[str, str]:
    return {key: xml_text(value) for key, value in values.items()}


def _testsuite(source: str, cases: list[CaseResult], mode: str) -> ET.Element:
    def count(outcome: str) -> int:
        return sum(1 for c in cases if c.outcome == outcome)

    element = ET.Element("testsuite", _attrs(
        name=source, tests=len(cases), failures=count(FAILED), errors=count(ERROR), skipped=count(SKIPPED),
        time=seconds(sum(c.wall_s for c in cases)), file=source))
    properties = ET.SubElement(element, "properties")
    modes = sorted({c.mode for c in cases if c.mode}) or [mode]
    ET.SubElement(properties, "property", _attrs(name="mode", value=",".join(modes)))
    for case in cases:
        if case.tags:
            ET.SubElement(properties, "property", _attrs(name=f"tags[{case.id}]", value=",".join(case.tags)))
    for case in cases:
        element.append(_testcase(case))
    return element


def _testcase(case: CaseResult) -> ET.Element:
    element = ET.Element("testcase", _attrs(name=case.id, classname=case.source, time=seconds(case.wall_s)))
    if case.outcome == FAILED:
        failed = case.failed_checks
        if failed:
            message = f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: " + "; ".join(
                c.what for c in failed)
        else:
            message = case.reason or "the case failed"
        child = ET.SubElement(element, "failure", _attrs(message=message, type="AssertionFailed"))
        child.text = xml_text(_failure_text(case))
    elif case.outcome == ERROR:
        child = ET.SubElement(element, "error", _attrs(message=case.reason or case.run_error or "the case errored",
                                                        type="ScenarioError"))
        child.text = xml_text(_error_text(case))
    elif case.outcome == SKIPPED:
        ET.SubElement(element, "skipped", _attrs(message=case.reason or "skipped"))
    out = _system_out(case)
    if out:
        ET.SubElement(element, "system-out").text = xml_text(out)
    return element


def _failure_text(case: CaseResult) -> str:
    return "\n\n".join(([case.reason] if case.reason else []) + _checks(case))


def _checks(case: CaseResult) -> list[str]:
    """Each failed check as a block of lines: what, expected, actual, diff."""
    blocks = []
    for check in case.failed_checks:
        lines = [check.what, f"  expected: {show_value(check.expected)}", f"  actual:   {show_value(check.actual)}"]
        diff = diff_of(check)
        if diff:
            lines += ["  diff:", *("    " + line for line in diff.splitlines())]
        blocks.append("\n".join(lines))
    return blocks


def _error_text(case: CaseResult) -> str:
    lines = [case.reason] if case.reason else []
    if case.run_error and case.run_error != case.reason:
        lines.append(f"run error: {case.run_error}")
    for step in case.steps:
        for a in step.attempts:
            if a.error:
                lines.append(f"step {step.name} attempt {a.attempt}: {a.error_type or 'Error'}: {a.error}")
    return "\n\n".join(block for block in ["\n".join(lines), *_checks(case)] if block)


def _system_out(case: CaseResult) -> str:
    """The facts of the run: its id and status, each step's status and attempts, the faults."""
    lines = []
    if case.run_id:
        lines.append(f"run {case.run_id}: {case.run_status or '?'} ({case.runs} run{'s' if case.runs != 1 else ''})")
    if case.virtual_s is not None:
        lines.append(f"virtual time: {case.virtual_s:g} s")
    for step in case.steps:
        stub = " (stubbed)" if step.stubbed else ""
        lines.append(f"step {step.name}: {step.status}{stub}, {len(step.attempts)} attempt(s)")
    lines += [f"fault: {f}" for f in case.faults]
    return "\n".join(lines)
