"""The Grafana dashboard and the Prometheus alert rules of ops/dashboards (issue 14).

The rules are checked and unit-tested with promtool (``make install`` fetches it into .venv/tools from
Debian's prometheus package); every ``miniflow_*`` name in an expression must be in the metrics
catalogue of ``miniflow.actors.metrics``; the dashboard's panels are well formed and their queries parse.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from miniflow.actors.metrics import NAMES, Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "ops" / "dashboards"
GRAFANA = DASHBOARDS / "grafana.json"
ALERTS = DASHBOARDS / "alerts.yml"
ALERT_TESTS = DASHBOARDS / "alerts.test.yml"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')  # PromQL string literals
_METRIC = re.compile(r"(?<![A-Za-z0-9_:])miniflow_[A-Za-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# -- promtool ----------------------------------------------------------------------------------------
def _find_promtool() -> str | None:
    for candidate in (ROOT / ".venv" / "tools" / "promtool", Path(sys.prefix) / "tools" / "promtool"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = _find_promtool()
    if found is None:
        message = "promtool not found in .venv/tools or on PATH (`make install` fetches it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_rules_pass_promtool_check(promtool: str) -> None:
    _run(promtool, "check", "rules", str(ALERTS))


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    _run(promtool, "test", "rules", str(ALERT_TESTS))


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL (as a recording rule)."""
    rules = []
    for name, expr in _dashboard_exprs(_dashboard()):
        filled = re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", expr.strip())  # a variable's series
        filled = re.sub(r"\$__\w+", "5m", filled)
        filled = re.sub(r"\$\{?\w+\}?", ".*", filled)
        rules.append({"record": "dashboard:" + re.sub(r"[^A-Za-z0-9_]", "_", name), "expr": filled})
    assert rules
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(promtool, "check", "rules", str(path))


# -- metric names --------------------------------------------------------------------------------------
def _dashboard() -> dict[str, Any]:
    data = json.loads(GRAFANA.read_text())
    assert isinstance(data, dict)
    return data


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # the panels of a collapsed row


def _dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel['id']} {target.get('refId', '')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            yield f"variable {variable['name']}", text


@cache
def _histograms() -> frozenset[str]:
    families = Metrics("test", "0").registry.collect()
    return frozenset(family.name for family in families if family.type == "histogram")


def _unknown_names(expr: str) -> set[str]:
    histograms = _histograms()
    unknown = set()
    for name in _METRIC.findall(_STRING.sub('""', expr)):
        if name in NAMES:
            continue
        base = next((name[:-len(s)] for s in _HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base is None or base not in histograms:
            unknown.add(name)
    return unknown


def test_catalogue_histograms_are_named() -> None:
    histograms = _histograms()
    assert histograms, "the metrics registry has no histogram"
    assert histograms <= set(NAMES)


def test_name_check_itself() -> None:
    assert _unknown_names('rate(miniflow_step_duration_seconds_bucket{queue="miniflow_nope"}[5m])') == set()
    assert _unknown_names("miniflow_runs_started") == {"miniflow_runs_started"}  # counters need _total
    assert _unknown_names("miniflow_outbox_backlog_count") == {"miniflow_outbox_backlog_count"}  # a gauge


def test_dashboard_uses_only_catalogued_metrics() -> None:
    used: set[str] = set()
    for where, expr in _dashboard_exprs(_dashboard()):
        assert not _unknown_names(expr), f"{where}: not in the metrics catalogue: {_unknown_names(expr)}"
        used.update(_METRIC.findall(_STRING.sub('""', expr)))
    assert len(used) >= 15, used


def test_alerts_use_only_catalogued_metrics() -> None:
    for rule in _alert_rules():
        assert _METRIC.search(rule["expr"]), rule["alert"]
        unknown = _unknown_names(rule["expr"])
        assert not unknown, f"{rule['alert']}: not in the metrics catalogue: {unknown}"


# -- shape -----------------------------------------------------------------------------------------------
def test_alerts_have_severity_summary_and_description() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        text = json.dumps(rule["annotations"])
        assert "run_id" not in text and "$labels.run" not in text, rule["alert"]


def test_every_alert_is_unit_tested() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in _alert_rules()}


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "DS_PROMETHEUS" in variables or "__inputs" in dashboard
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    for panel in panels:
        assert str(panel.get("title", "")).strip(), f"panel {panel['id']} has no title"
        assert panel.get("gridPos"), f"panel {panel['id']} has no position"
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr") for t in targets), f"panel {panel['id']} has no query"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["id"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["id"]
