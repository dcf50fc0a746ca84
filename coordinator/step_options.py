"""The parts of a step's definition that decide whether it runs: its condition (``when``) and its
trigger rule (``trigger``). ``definitions`` calls these for every step; each raises a
DefinitionError naming the step and what is wrong.
"""

from __future__ import annotations

from typing import Any

from miniflow.protocol.errors import DefinitionError

from .expressions import ExpressionError, compile_expression, names_in
from .workflow import TriggerRule

WHEN_NAMES = ("params", "inputs")  # what a step's condition may read
TRIGGER_RULES = tuple(str(rule) for rule in TriggerRule)


def parse_when(raw: Any, source: str, step: str) -> str | None:
    """A condition: an expression (coordinator/expressions.py) over ``params`` and ``inputs``."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raw = str(raw)
    try:
        tree = compile_expression(raw)
    except ExpressionError as exc:
        raise DefinitionError(source, f"'when': {exc}", step) from None
    unknown = sorted(names_in(tree) - set(WHEN_NAMES))
    if unknown:
        raise DefinitionError(source, f"'when' reads {unknown[0]!r}; a condition reads only "
                              f"{' and '.join(WHEN_NAMES)} (the outputs of the steps it needs)", step)
    return str(raw).strip()


def parse_trigger(raw: Any, source: str, step: str, needs: tuple[str, ...]) -> TriggerRule:
    """A trigger rule by name; one other than all_succeeded only on a step that needs something."""
    if raw is None:
        return TriggerRule.ALL_SUCCEEDED
    if not isinstance(raw, str) or raw not in TRIGGER_RULES:
        shown = repr(raw)[:60]
        raise DefinitionError(source, f"'trigger' is {shown}; it must be one of {', '.join(TRIGGER_RULES)}", step)
    rule = TriggerRule(raw)
    if rule != TriggerRule.ALL_SUCCEEDED and not needs:
        raise DefinitionError(source, f"'trigger: {rule}' on a step that needs nothing: a trigger rule says how "
                              "the steps it needs must have ended", step)
    return rule
