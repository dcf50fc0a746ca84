"""Concurrency limits of runs: at most ``max_active_runs`` running runs of a workflow, and at most
``max_per_key`` with the same value of its ``key`` (an expression over params: one run per
customer, say).

    concurrency:
      max_active_runs: 2
      key: params.customer
      max_per_key: 1

A start past a limit creates its run ``queued``: its steps wait, nothing is dispatched, it has no
deadline yet. Whenever a run of the workflow ends, in the same transaction, the coordinator looks
for the queued runs that now have room (higher priority first, then the oldest) and begins them;
the reconciler does the same every pass, for room that opens otherwise (a deploy that raises a
limit). Every start and every end first takes the workflow's gate (``repository.gates``), so the
decisions of several coordinators on one workflow happen one at a time and never overshoot a
limit; no queued run is lost, since each is begun by the end that makes room for it. A queued
run's limits are those of its own version; the counts are over every version of the workflow.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from miniflow.persistence import RunRow
from miniflow.persistence import repository as repo
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import DefinitionError, MessageRejected

from .catalog import Catalog
from .expressions import ExpressionError, compile_expression, evaluate, names_in
from .workflow import Concurrency, ParamSpec, Workflow

MAX_LIMIT = 100_000
MAX_KEY = 255  # characters of a key's value kept (the runs.concurrency_key column)
SCAN = 500  # queued runs of a workflow read at a time in a pass
PAGES = 40  # at most this many reads in a pass (the reconciler's next pass goes on)
_ADMITTING = "miniflow_admitting"  # conn.info: workflow -> whether room changed during its pass
_KEYS = {"max_active_runs", "key", "max_per_key"}


def parse_concurrency(raw: Any, source: str, params: dict[str, ParamSpec]) -> Concurrency | None:
    """A workflow's ``concurrency`` mapping; DefinitionError naming what is wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DefinitionError(source, "'concurrency' must be a mapping (max_active_runs, key, max_per_key)")
    extra = sorted(str(k) for k in set(raw) - _KEYS)
    if extra:
        raise DefinitionError(source, f"unknown concurrency key(s) {', '.join(extra)} "
                              f"(allowed: {', '.join(sorted(_KEYS))})")
    most = _limit(raw.get("max_active_runs"), "max_active_runs", source)
    per_key = _limit(raw.get("max_per_key"), "max_per_key", source)
    key = raw.get("key")
    if key is None:
        if per_key is not None:
            raise DefinitionError(source, "'concurrency': max_per_key needs a key (an expression over params, "
                                  "e.g. params.customer)")
        if most is None:
            raise DefinitionError(source, "'concurrency' sets no limit: give max_active_runs, or a key "
                                  "(and max_per_key)")
        return Concurrency(max_active_runs=most)
    _check_key(key, source, params)
    return Concurrency(max_active_runs=most, key=str(key).strip(), max_per_key=per_key or 1)


def _limit(value: Any, name: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise DefinitionError(source, f"'concurrency': {name} must be a whole number from 1 to {MAX_LIMIT}")
    return value


def _check_key(key: Any, source: str, params: dict[str, ParamSpec]) -> None:
    """A key reads params only, and never a secret one (its value is stored and shown in the clear)."""
    try:
        tree = compile_expression(key)
    except ExpressionError as exc:
        raise DefinitionError(source, f"'concurrency': key: {exc}") from None
    unknown = sorted(names_in(tree) - {"params"})
    if unknown:
        raise DefinitionError(source, f"'concurrency': key reads {unknown[0]!r}; a key reads only params")
    secrets = {name for name, spec in params.items() if spec.secret}
    if not secrets:
        return
    read, whole = params_read(tree)
    if whole:
        raise DefinitionError(source, "'concurrency': key reads params as a whole, and the workflow has secret "
                              "params: name the params it reads (params.customer)")
    leaked = sorted(read & secrets)
    if leaked:
        raise DefinitionError(source, f"'concurrency': key reads the secret param {leaked[0]!r}: a key's value "
                              "is stored and shown in the clear")


def params_read(tree: ast.expr) -> tuple[set[str], bool]:
    """The params a key reads by name (``params.x``, ``params['x']``), and whether it reads them otherwise."""
    named: set[str] = set()
    inside: set[int] = set()
    for node in ast.walk(tree):
        target = node.value if isinstance(node, (ast.Attribute, ast.Subscript)) else None
        if not (isinstance(target, ast.Name) and target.id == "params"):
            continue
        if isinstance(node, ast.Attribute):
            named.add(node.attr)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            named.add(node.slice.value)
        else:
            continue
        inside.add(id(target))
    bare = any(isinstance(n, ast.Name) and n.id == "params" and id(n) not in inside for n in ast.walk(tree))
    return named, bare


def run_key(workflow: Workflow, params: dict[str, Any]) -> str | None:
    """The value of the workflow's concurrency key for a start's params (bounded text); None without
    a key. MessageRejected (invalid_params) when the params do not give it."""
    limits = workflow.concurrency
    if limits is None or limits.key is None:
        return None
    try:
        value = evaluate(limits.key, {"params": params})
    except ExpressionError as exc:
        raise MessageRejected(Reason.INVALID_PARAMS, f"workflow {workflow.name!r}: its concurrency key "
                              f"`{limits.key}` cannot be evaluated on these params: {exc}", "params") from None
    try:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:  # keys of mixed types cannot be sorted
        raise MessageRejected(Reason.INVALID_PARAMS, f"workflow {workflow.name!r}: the value of its concurrency "
                              f"key `{limits.key}` cannot be made a key: {exc}", "params") from None
    return text[:MAX_KEY]


class Room:
    """The running runs of a workflow, by key, and whether a run with given limits fits beside them."""

    def __init__(self, running: dict[str | None, int]) -> None:
        self.running = dict(running)
        self.total = sum(running.values())

    def fits(self, limits: Concurrency | None, key: str | None) -> bool:
        if limits is None:
            return True
        if limits.max_active_runs is not None and self.total >= limits.max_active_runs:
            return False
        return limits.key is None or self.running.get(key, 0) < (limits.max_per_key or 1)

    def full(self, limits: Concurrency | None) -> bool:
        """Whether no run with these limits fits, whatever its key (max_active_runs is reached)."""
        return limits is not None and limits.max_active_runs is not None and self.total >= limits.max_active_runs

    def take(self, key: str | None) -> None:
        self.total += 1
        self.running[key] = self.running.get(key, 0) + 1

    def why_not(self, limits: Concurrency, key: str | None) -> str:
        """Why a run with these limits waits (for a queued run, shown by `miniflow why`)."""
        if limits.max_active_runs is not None and self.total >= limits.max_active_runs:
            return f"max_active_runs: {self.total} of at most {limits.max_active_runs} runs are running"
        return (f"max_per_key: {self.running.get(key, 0)} of at most {limits.max_per_key} runs with key "
                f"{key!r} are running")


def may_begin(conn: Connection, workflow: Workflow, key: str | None, now: datetime) -> bool:
    """Whether a run of ``workflow`` with ``key`` may begin now (the gate is taken first)."""
    repo.lock_gate(conn, workflow.name, now)
    return Room(repo.count_running(conn, workflow.name)).fits(workflow.concurrency, key)


def why_queued(conn: Connection, workflow: Workflow, key: str | None) -> str:
    """Why a queued run of ``workflow`` (with ``key``) waits, as of now."""
    limits = workflow.concurrency
    if limits is None:
        return "the run is queued, and its workflow version has no concurrency limits: it begins on the next pass"
    room = Room(repo.count_running(conn, workflow.name))
    if room.fits(limits, key):
        return "the run is queued for a slot, and there is room now: it begins when a run ends or on the next pass"
    return f"the run is queued for a slot of {workflow.name!r}: {room.why_not(limits, key)}"


Begin = Callable[[RunRow, Workflow], None]


def admit_queued(conn: Connection, catalog: Catalog, workflow: str, now: datetime, begin: Begin) -> list[str]:
    """Begin the queued runs of ``workflow`` that have room now, first to admit first; their ids.

    Not re-entered: a run begun here may end at once (all its roots skipped or served from the
    cache), and its end asks for a pass of its own; that is noted, and this pass looks again when
    it is done, with a fresh count (a nested pass would begin the same queued runs twice)."""
    passes: dict[str, bool] = conn.info.setdefault(_ADMITTING, {})
    if workflow in passes:
        passes[workflow] = True
        return []
    passes[workflow] = False
    admitted: list[str] = []
    try:
        while True:
            admitted += _admit_once(conn, catalog, workflow, now, begin)
            if not passes[workflow]:
                return admitted
            passes[workflow] = False
    finally:
        del passes[workflow]


def _admit_once(conn: Connection, catalog: Catalog, workflow: str, now: datetime, begin: Begin) -> list[str]:
    repo.lock_gate(conn, workflow, now)
    room = Room(repo.count_running(conn, workflow))
    admitted: list[str] = []
    for offset in range(0, SCAN * PAGES, SCAN):  # page on: runs of a key at its limit may fill a page
        page = repo.queued_runs(conn, workflow, SCAN, offset)
        for run in page:
            version = catalog.workflow(conn, run.workflow, run.version)
            if version is None or not room.fits(version.concurrency, run.concurrency_key):
                if version is not None and room.full(version.concurrency):
                    return admitted
                continue
            room.take(run.concurrency_key)
            begin(run, version)
            admitted.append(run.id)
        if len(page) < SCAN:
            break
    return admitted
