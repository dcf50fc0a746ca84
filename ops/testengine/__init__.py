"""The test engine: workflow scenarios with stubbed steps, injected faults and assertions, run in
this process on a virtual clock (embedded mode), with terminal, JUnit XML, HTML and JSON reports.

    from miniflow.ops.testengine import Scenario, Stub, Expect, StepExpect, run_scenarios
"""

from .model import Case, Expect, Fault, Scenario, ScenarioError, StepExpect, Stub
from .results import CaseResult, Check, SuiteResult
from .runner import run_scenarios

__all__ = ["Case", "CaseResult", "Check", "Expect", "Fault", "Scenario", "ScenarioError", "StepExpect", "Stub",
           "SuiteResult", "run_scenarios"]
