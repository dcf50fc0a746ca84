"""The states of runs and steps, defined once. Stored as these strings in the ``runs`` and
``run_steps`` tables and shown as they are by every face (CLI, JSON); the transitions are decided
in ``coordinator.state``.

    run:  [queued ->] running -> succeeded | failed | cancelled   (queued: waiting for a slot under the
          workflow's concurrency limits; a queued run may be cancelled)
    step: pending -> queued (attempt n) -> succeeded | failed | queued (attempt n+1, a retry)
          pending -> skipped | upstream_failed (a need failed, and the step's trigger rule asks for
                     successes);  queued -> cancelled
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"  # waiting for a slot (its workflow's concurrency limits): nothing of it dispatched
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"  # not run: a step it needs failed (or did not run for that reason)
    CANCELLED = "cancelled"


RUN_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
# A step in one of these did not succeed because something failed: trigger rules count it as failed.
FAILED_OUTCOMES = frozenset({StepStatus.FAILED, StepStatus.UPSTREAM_FAILED})
RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})  # a run retry re-opens only these
