"""Workflow definitions, DAG validation, the run/step state machine and the coordinating services."""

from .definitions import Backoff, ParamSpec, StepSpec, Workflow, find_cycle, load_file, loads, parse
from .schedule import next_fire, parse_cron
from .scheduling import Scheduler, ScheduleSpec
from .service import Coordinator, Outgoing, StartOutcome, mask_params, mask_values, resolve_params
from .state import Decision, backoff_delay, decide, ready_steps

__all__ = [
    "Backoff", "Coordinator", "Decision", "Outgoing", "ParamSpec", "ScheduleSpec", "Scheduler", "StartOutcome",
    "StepSpec", "Workflow", "next_fire", "parse_cron",
    "backoff_delay", "decide", "find_cycle", "load_file", "loads", "mask_params", "mask_values", "parse", "ready_steps",
    "resolve_params",
]
