"""The run/step state machine as pure functions: no database, no clock, no broker.

Run:  running -> succeeded | failed | cancelled
Step: pending -> queued (attempt n) -> succeeded
                                    -> queued (attempt n+1, after a backoff) while attempts remain
                                    -> failed
      pending -> skipped            (the run ended before the step could start, its condition was
                                     false, or its trigger rule was not met: a need was skipped)
      pending -> upstream_failed    (a need failed, and its trigger rule asks for successes)
      queued -> cancelled           (the run ended while the step was out; a late result is
                                     recorded as an attempt but changes nothing)

The states themselves are the enums of ``protocol.states``. ``decide`` takes the workflow, every
step's status and the attempt that just finished, and returns a :class:`Decision`: what the step
becomes, what to dispatch, and whether the run ends. It is the state machine's reference; the
coordinator (``runs``) applies the same rules without reading every step: ``decide_failure`` for a
failed attempt, and for a success the counters of ``persistence.repository.counters`` (a step is
ready when its needs' counter reaches 0, the run succeeds when its open ends do) and the
conditions of ``completion`` (a step whose ``when`` is false is skipped, and so is what needs it).
``trigger_verdict`` applies a step's trigger rule once all its needs have ended. In a workflow
without trigger rules a failed step ends its run at once (``decide`` shows that); with one, the
failure settles its dependents by their rules instead and the run fails once every step has ended.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from miniflow.protocol.states import FAILED_OUTCOMES, RunStatus, StepStatus

from .workflow import Backoff, TriggerRule, Workflow


@dataclass(frozen=True)
class Decision:
    step_status: StepStatus
    retry_delay: float | None = None  # seconds before the next attempt of this step, when retrying
    dispatch: tuple[str, ...] = ()  # steps to dispatch now (their first attempt)
    skip: tuple[str, ...] = ()  # pending steps that will never run
    cancel: tuple[str, ...] = ()  # queued steps whose results no longer matter
    run_status: RunStatus | None = None  # set when the run ends
    run_error: str | None = None


def ready_steps(workflow: Workflow, statuses: dict[str, StepStatus]) -> list[str]:
    """Pending steps whose needs have all succeeded, in definition order."""
    return [
        s.name for s in workflow.steps.values()
        if statuses.get(s.name) == StepStatus.PENDING
        and all(statuses.get(n) == StepStatus.SUCCEEDED for n in s.needs)
    ]


def trigger_verdict(rule: TriggerRule, needs: dict[str, StepStatus | None]) -> tuple[StepStatus, str] | None:
    """Once all of a step's ``needs`` have ended (name -> how): None when the step is to run (its
    condition then decides), else the status it takes instead and why."""
    failed = next((name for name, status in needs.items() if status in FAILED_OUTCOMES), None)
    skipped = next((name for name, status in needs.items() if status == StepStatus.SKIPPED), None)
    if rule == TriggerRule.ALL_DONE:
        return None
    if rule == TriggerRule.ANY_FAILED:
        return None if failed is not None else (StepStatus.SKIPPED, "skipped: its trigger is any_failed, and none "
                                                                    "of the steps it needs failed")
    if failed is not None:
        return StepStatus.UPSTREAM_FAILED, f"not run: it needs {failed!r}, which " + (
            "failed" if needs[failed] == StepStatus.FAILED else "did not run because of a failure")
    if skipped is not None and rule == TriggerRule.ALL_SUCCEEDED:
        return StepStatus.SKIPPED, f"skipped: it needs {skipped!r}, which was skipped"
    return None


def backoff_delay(policy: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): initial * multiplier^(n-1),
    capped at max, then spread by +-jitter."""
    try:
        base = min(policy.max, policy.initial * policy.multiplier ** max(0, attempt - 1))
    except OverflowError:
        base = policy.max
    if policy.jitter and base:
        spread = (rng or random).uniform(-policy.jitter, policy.jitter)
        base = max(0.0, base * (1 + spread))
    return base


def decide(workflow: Workflow, statuses: dict[str, StepStatus], step: str, attempt: int, ok: bool,
           error: str | None = None, rng: random.Random | None = None) -> Decision:
    """What follows from attempt ``attempt`` of ``step`` finishing (``ok`` or not)."""
    after = dict(statuses)
    if ok:
        after[step] = StepStatus.SUCCEEDED
        ready = tuple(ready_steps(workflow, after))
        if all(after[s] == StepStatus.SUCCEEDED for s in workflow.steps):
            return Decision(StepStatus.SUCCEEDED, run_status=RunStatus.SUCCEEDED)
        return Decision(StepStatus.SUCCEEDED, dispatch=ready)
    failure = decide_failure(workflow, step, attempt, error, rng)
    if failure.retry_delay is not None:
        return failure
    after[step] = StepStatus.FAILED
    skip = tuple(s for s, st in after.items() if st == StepStatus.PENDING)
    cancel = tuple(s for s, st in after.items() if st == StepStatus.QUEUED)
    return dataclasses.replace(failure, skip=skip, cancel=cancel)


def decide_failure(workflow: Workflow, step: str, attempt: int, error: str | None = None,
                   rng: random.Random | None = None) -> Decision:
    """What follows from attempt ``attempt`` of ``step`` failing: another attempt after a backoff
    while attempts remain, else the run fails (its pending steps are then skipped and its queued
    ones cancelled: their late results are recorded as attempts but change nothing)."""
    spec = workflow.spec(step)  # a step, or an instance of a map step
    if attempt < spec.max_attempts:
        return Decision(StepStatus.QUEUED, retry_delay=backoff_delay(spec.backoff, attempt, rng))
    reason = f"step {step!r} failed after {attempt} attempt{'s' if attempt > 1 else ''}"
    if error:
        reason += f": {error}"
    return Decision(StepStatus.FAILED, run_status=RunStatus.FAILED, run_error=reason)
