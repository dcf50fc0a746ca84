"""A pytest plugin (registered as ``miniflow`` through the ``pytest11`` entry point): pytest collects
``*.scenario.yaml`` files as tests, one item per case, and gives a team's own tests two fixtures:

- ``miniflow_scenarios``: runs Scenario objects (the Python API) and returns the SuiteResult;
- ``miniflow_engine``: a started embedded engine (in-memory broker + SQLite) of its own, stopped after.

    def test_my_flow(miniflow_scenarios):
        suite = miniflow_scenarios([Scenario(name="ok", workflow=Path("flows/etl.yaml"), ...)])
        assert suite.exit_code == 0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .loader import load_file
from .model import Case, Scenario, ScenarioError
from .report import check_text
from .results import ERROR, FAILED, SKIPPED, CaseResult, SuiteResult
from .runner import run_scenarios

SUFFIXES = (".scenario.yaml", ".scenario.yml")


class ScenarioFailed(ScenarioError):
    """A case whose checks did not hold (only inside pytest; ``repr_failure`` shows its checks)."""

    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.source, result.line, f"{result.id}: {result.outcome}")
        self.result = result


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.name.endswith(SUFFIXES):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        for scenario in load_file(self.path):
            for case_id, case in scenario.expanded():
                yield ScenarioItem.from_parent(self, name=case_id.split("::", 1)[1], scenario=scenario, case=case,
                                               case_id=case_id)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, case: Case, case_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario, self.case, self.case_id = scenario, case, case_id
        self.extra_keyword_matches.update(scenario.tags)  # `pytest -k smoke` selects by tag

    def runtest(self) -> None:
        (result,) = run_scenarios([], items=[(self.scenario, self.case_id, self.case)]).cases
        if result.outcome == SKIPPED:
            pytest.skip(result.reason)
        if result.outcome in (FAILED, ERROR):
            raise ScenarioFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            result = excinfo.value.result
            lines = [f"{result.id}: {result.outcome}" + (f": {result.reason}" if result.reason else "")]
            lines += [check_text(check).plain for check in result.failed_checks]
            return "\n".join(lines)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, max(0, self.scenario.line - 1), self.name


@pytest.fixture
def miniflow_scenarios() -> Callable[..., SuiteResult]:
    """Run scenarios (``run_scenarios``'s keywords: jobs, tags, keyword, fail_fast)."""

    def run(scenarios: Iterable[Scenario], **options: Any) -> SuiteResult:
        return run_scenarios(list(scenarios), **options)

    return run


@pytest.fixture
def miniflow_engine(tmp_path: Path) -> Iterator[Any]:
    from ..embedded import EmbeddedEngine

    with EmbeddedEngine(f"sqlite:///{tmp_path / 'miniflow.db'}", threads=4) as engine:
        yield engine
