"""What running one scenario case found: the data every report (summary, JUnit, HTML, JSON) is made
from. Plain dataclasses; ``to_json`` gives JSON-compatible data. Outputs and errors in here are
already masked (secret params replaced by ``***``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
OUTCOMES = (PASSED, FAILED, ERROR, SKIPPED)


@dataclass
class Check:
    """One assertion: what it checks (``run status``, ``step load attempts``, ...), whether it held,
    what was expected and what was found; ``diff`` is a readable difference when it failed."""

    what: str
    ok: bool
    expected: Any = None
    actual: Any = None
    diff: str = ""


@dataclass
class AttemptOutcome:
    attempt: int
    status: str
    error_type: str | None = None
    error: str | None = None
    node: str | None = None
    started_at: float | None = None  # seconds after the run was created (virtual in embedded mode)
    finished_at: float | None = None


def attempt_error(attempt: AttemptOutcome) -> str:
    """``Type: message`` for a failed attempt (once: a step's exception text often starts with its type)."""
    if not attempt.error:
        return ""
    kind = attempt.error_type or "Error"
    return attempt.error if attempt.error.startswith(f"{kind}:") else f"{kind}: {attempt.error}"


@dataclass
class StepOutcome:
    name: str
    status: str
    needs: list[str] = field(default_factory=list)
    stubbed: bool = False
    output: Any = None
    attempts: list[AttemptOutcome] = field(default_factory=list)


@dataclass
class CaseResult:
    """One case of one scenario (a scenario without ``cases`` has one)."""

    id: str  # "path::scenario name[case name]": what -k matches and reports name
    scenario: str
    case: str | None
    source: str  # the scenario file (or "<python>")
    line: int
    mode: str  # embedded | against
    outcome: str = PASSED  # one of OUTCOMES
    reason: str = ""  # why it was skipped, or the error that stopped it
    tags: list[str] = field(default_factory=list)
    workflow: str = ""
    wall_s: float = 0.0
    virtual_s: float | None = None  # virtual time the case spanned (embedded mode)
    run_id: str | None = None
    run_status: str | None = None
    run_error: str | None = None
    runs: int = 0  # runs the case started (more than one for schedules)
    steps: list[StepOutcome] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        data["steps"] = [StepOutcome(**{**s, "attempts": [AttemptOutcome(**a) for a in s.get("attempts", [])]})
                         for s in data.get("steps", [])]
        return cls(**data)


@dataclass
class SuiteResult:
    cases: list[CaseResult]
    wall_s: float
    mode: str

    def count(self, outcome: str) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)

    @property
    def exit_code(self) -> int:
        """pytest's meaning: 0 all passed (or skipped), 1 a case failed or errored."""
        return 1 if any(c.outcome in (FAILED, ERROR) for c in self.cases) else 0
