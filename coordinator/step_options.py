"""The parts of a step's definition that decide whether and how it runs: its condition (``when``),
its trigger rule (``trigger``), its result cache (``cache``) and its fan-out (``map``). ``definitions`` calls these for
every step; each raises a DefinitionError naming the step and what is wrong.
"""

from __future__ import annotations

import ast
from typing import Any

from miniflow.protocol.errors import DefinitionError

from .concurrency import params_read
from .expressions import ExpressionError, compile_expression, names_in
from .workflow import CachePolicy, MapFailure, MapSpec, ParamSpec, TriggerRule

WHEN_NAMES = ("params", "inputs")  # what a step's condition may read
TRIGGER_RULES = tuple(str(rule) for rule in TriggerRule)
CACHE_KEY_NAMES = ("inputs", "config", "params")  # what a cache key may read
MAX_CACHE_TTL_S = 365 * 24 * 3600.0
DEFAULT_CACHE_TTL_S = 24 * 3600.0
MAX_MAP_ELEMENTS = 10_000  # elements of one map (and its largest concurrency)
DEFAULT_MAP_CONCURRENCY = 1000  # a map's elements out at once, unless it says
MAX_MAP_STEP_NAME = 128 - len("[9999]") - 1  # its instances' names fit the 128 of a step name
MAP_FAILURES = tuple(str(policy) for policy in MapFailure)


def _expression(raw: Any, what: str, allowed: tuple[str, ...], why: str, source: str, step: str) -> ast.expr:
    """A step's expression, compiled, reading only ``allowed`` names; DefinitionError naming ``what``."""
    try:
        tree = compile_expression(raw)
    except ExpressionError as exc:
        raise DefinitionError(source, f"{what}: {exc}", step) from None
    unknown = sorted(names_in(tree) - set(allowed))
    if unknown:
        raise DefinitionError(source, f"{what} reads {unknown[0]!r}; {why}", step)
    return tree


def parse_when(raw: Any, source: str, step: str) -> str | None:
    """A condition: an expression (coordinator/expressions.py) over ``params`` and ``inputs``."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raw = str(raw)
    _expression(raw, "'when'", WHEN_NAMES, f"a condition reads only {' and '.join(WHEN_NAMES)} (the outputs "
                "of the steps it needs)", source, step)
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


def parse_cache(raw: Any, source: str, step: str, params: dict[str, ParamSpec]) -> CachePolicy | None:
    """A step's ``cache``: ``{ttl: seconds, key: expression}`` (both optional: a day, and the inputs,
    config and params that are not secret); the key may not read a secret param."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict) or set(raw) - {"ttl", "key"}:
        raise DefinitionError(source, "'cache' must be true or a mapping with 'ttl' (seconds) and/or 'key' "
                              "(an expression over inputs, config and params)", step)
    ttl = raw.get("ttl", DEFAULT_CACHE_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= MAX_CACHE_TTL_S:
        raise DefinitionError(source, f"cache 'ttl' must be seconds from 1 to {MAX_CACHE_TTL_S:g}", step)
    key = raw.get("key")
    if key is not None:
        tree = _expression(key, "cache 'key'", CACHE_KEY_NAMES, f"it reads only {', '.join(CACHE_KEY_NAMES)}",
                           source, step)
        secrets = {name for name, spec in params.items() if spec.secret}
        read, whole = params_read(tree)
        if secrets and (whole or read & secrets):
            raise DefinitionError(source, "cache 'key' reads a secret param (or params as a whole, and the "
                                  "workflow has secret ones): a key must not depend on secrets", step)
        key = str(key).strip()
    return CachePolicy(ttl=float(ttl), key=key)


def parse_map(raw: Any, source: str, step: str, needs: tuple[str, ...], cached: bool) -> MapSpec | None:
    """A step's ``map``: ``<step>`` or ``<step>.<field>...`` (a step it needs, and where the list is in
    its output), or a mapping with ``over`` (that), ``concurrency`` and ``on_failure``."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"over": raw}
    if not isinstance(raw, dict) or set(raw) - {"over", "concurrency", "on_failure"} or "over" not in raw:
        raise DefinitionError(source, "'map' must name a step it needs and where the list is in its output "
                              "(like split.items), or be a mapping with 'over' (that), 'concurrency' and "
                              "'on_failure'", step)
    if len(step) > MAX_MAP_STEP_NAME:
        raise DefinitionError(source, f"a map step's name may be at most {MAX_MAP_STEP_NAME} characters (its "
                              "instances are named step[i])", step)
    if cached:
        raise DefinitionError(source, "a map step cannot have a 'cache' (cache the step it maps over, or a "
                              "step its elements call)", step)
    over = raw["over"]
    head = next((need for need in sorted(needs, key=len, reverse=True)
                 if isinstance(over, str) and (over == need or over.startswith(need + "."))), None)
    if head is None:
        shown = repr(over)[:80]
        raise DefinitionError(source, f"map over {shown}: it must start with the name of a step this step "
                              f"needs (needs: {', '.join(needs) or 'none'})", step)
    path = tuple(over[len(head) + 1:].split(".")) if over != head else ()
    if any(not part for part in path):
        raise DefinitionError(source, f"map over {over!r}: an empty field name", step)
    concurrency = raw.get("concurrency", DEFAULT_MAP_CONCURRENCY)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_MAP_ELEMENTS:
        raise DefinitionError(source, f"map 'concurrency' must be a whole number from 1 to {MAX_MAP_ELEMENTS}", step)
    policy = raw.get("on_failure", str(MapFailure.FAIL))
    if policy not in MAP_FAILURES:
        raise DefinitionError(source, f"map 'on_failure' is {repr(policy)[:40]}; it must be one of "
                              f"{', '.join(MAP_FAILURES)}", step)
    return MapSpec(over=head, path=path, concurrency=concurrency, on_failure=MapFailure(policy))
