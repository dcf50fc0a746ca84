"""The run/step state machine as pure functions: no database, no clock, no broker.

Run:  running -> succeeded | failed | cancelled
Step: pending -> queued (attempt n) -> succeeded
                                    -> queued (attempt n+1, after a backoff) while attempts remain
                                    -> failed
      pending -> skipped            (the run ended before the step could start)
      queued -> cancelled           (the run ended while the step was out; a late result is
                                     recorded as an attempt but changes nothing)

``decide`` takes what the coordinator knows (the workflow, every step's status, which attempt just
finished and how) and returns a :class:`Decision`: what the step becomes, what to dispatch, and
whether the run ends. The coordinator service applies it in one transaction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .definitions import Backoff, Workflow

RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_CANCELLED = "cancelled"
RUN_TERMINAL = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED})

STEP_PENDING = "pending"
STEP_QUEUED = "queued"
STEP_SUCCEEDED = "succeeded"
STEP_FAILED = "failed"
STEP_SKIPPED = "skipped"
STEP_CANCELLED = "cancelled"
STEP_TERMINAL = frozenset({STEP_SUCCEEDED, STEP_FAILED, STEP_SKIPPED, STEP_CANCELLED})


@dataclass(frozen=True)
class Decision:
    step_status: str
    retry_delay: float | None = None  # seconds before the next attempt of this step, when retrying
    dispatch: tuple[str, ...] = ()  # steps to dispatch now (their first attempt)
    skip: tuple[str, ...] = ()  # pending steps that will never run
    cancel: tuple[str, ...] = ()  # queued steps whose results no longer matter
    run_status: str | None = None  # set when the run ends
    run_error: str | None = None


def ready_steps(workflow: Workflow, statuses: dict[str, str]) -> list[str]:
    """Pending steps whose needs have all succeeded, in definition order."""
    return [
        s.name for s in workflow.steps.values()
        if statuses.get(s.name) == STEP_PENDING
        and all(statuses.get(n) == STEP_SUCCEEDED for n in s.needs)
    ]


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


def decide(workflow: Workflow, statuses: dict[str, str], step: str, attempt: int, ok: bool,
           error: str | None = None, rng: random.Random | None = None) -> Decision:
    """What follows from attempt ``attempt`` of ``step`` finishing (``ok`` or not)."""
    spec = workflow.steps[step]
    after = dict(statuses)
    if ok:
        after[step] = STEP_SUCCEEDED
        ready = tuple(ready_steps(workflow, after))
        if all(after[s] == STEP_SUCCEEDED for s in workflow.steps):
            return Decision(STEP_SUCCEEDED, run_status=RUN_SUCCEEDED)
        return Decision(STEP_SUCCEEDED, dispatch=ready)
    if attempt < spec.max_attempts:
        return Decision(STEP_QUEUED, retry_delay=backoff_delay(spec.backoff, attempt, rng))
    after[step] = STEP_FAILED
    skip = tuple(s for s, st in after.items() if st == STEP_PENDING)
    cancel = tuple(s for s, st in after.items() if st == STEP_QUEUED)
    reason = f"step {step!r} failed after {attempt} attempt{'s' if attempt > 1 else ''}"
    if error:
        reason += f": {error}"
    # The run fails now; steps still out on other branches are cancelled: their late results are
    # recorded as attempts but change nothing.
    return Decision(STEP_FAILED, skip=skip, cancel=cancel, run_status=RUN_FAILED, run_error=reason)
