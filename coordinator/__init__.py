"""Workflows and the decisions about their runs: given a database transaction and an event, what to
record and what to send. No broker here: messages go to the outbox, the actors layer sends them.

    workflow         the Workflow type: steps, params, policies, its stored spec
    definitions      workflow files (YAML) and specs -> validated Workflows, every problem reported
    catalog          deployed workflow versions, cached (they are immutable)
    params           a run's params from the declared defaults and the start's
    state            the run/step state machine as a pure function (``decide``)
    runs             the Coordinator: start, dispatch, advance, cancel, retry
    results          recording each attempt once, and the dead-letter archive
    reconcile        repairs after lost messages, and workflow deadlines
    outbox           messages written in the same transaction as the change that implies them
    instrument       the hooks tracing plugs into (a no-op by default)
    cron             cron maths: pure functions of (expression, timezone, instant)
    schedule_policy  per-tick decisions: jitter, catch-up, overlap, ledger outcomes
    schedule_spec    schedules as written (YAML or the command line), validated
    scheduler        the Scheduler: schedules and the ticks they fire
"""

from .catalog import Catalog
from .cron import Cron, next_fire, next_fires, parse_cron
from .definitions import load_file, loads, parse
from .instrument import Instrument
from .outbox import Outbox, Outgoing
from .params import resolve_params
from .reconcile import Reconciler
from .results import Results
from .runs import Coordinator, StartOutcome
from .schedule_spec import ScheduleSpec, load_schedules_file, parse_schedule
from .scheduler import Scheduler
from .state import Decision, backoff_delay, decide, ready_steps
from .workflow import Backoff, ParamSpec, StepSpec, Workflow, find_cycle

__all__ = [
    "Backoff", "Catalog", "Coordinator", "Cron", "Decision", "Instrument", "Outbox", "Outgoing", "ParamSpec",
    "Reconciler", "Results", "ScheduleSpec", "Scheduler", "StartOutcome", "StepSpec", "Workflow", "backoff_delay",
    "decide", "find_cycle", "load_file", "load_schedules_file", "loads", "next_fire", "next_fires", "parse",
    "parse_cron", "parse_schedule", "ready_steps", "resolve_params",
]
