"""Queue and actor names. Every queue name starts with the namespace (default ``miniflow``)."""

from __future__ import annotations

import re

DEFAULT_NAMESPACE = "miniflow"
_NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_\-]{0,63}$")
_POOL_RE = re.compile(r"^[a-zA-Z0-9_\-]{1,64}$")

# Actor names: what a message's ``actor_name`` must say.
START_WORKFLOW = "start_workflow"
CANCEL_RUN = "cancel_run"
RETRY_RUN = "retry_run"
EXECUTE_STEP = "execute_step"
RECORD_RESULT = "record_result"
STEP_FINISHED = "step_finished"
STEP_PROGRESS = "step_progress"
RECORD_DEAD_LETTER = "record_dead_letter"
WORKER_HEARTBEAT = "worker_heartbeat"


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} must be 1-64 characters of letters, digits, '_' "
                         "or '-', starting with a letter or '_'")
    return namespace


def check_pool(pool: str) -> str:
    if not _POOL_RE.fullmatch(pool):
        raise ValueError(f"step queue {pool!r} must be 1-64 characters of letters, digits, '_' or '-'")
    return pool


class QueueNames:
    """The queues of one namespace."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = check_namespace(namespace)
        self.ingress = f"{namespace}.ingress"  # start_workflow, cancel_run, retry_run: open to producers
        self.coordinator = f"{namespace}.coordinator"  # step_finished, step_progress: internal
        self.results = f"{namespace}.results"  # record_result, record_dead_letter, worker_heartbeat: internal
        self.steps = f"{namespace}.steps"  # execute_step for the default pool

    def step_queue(self, pool: str | None = None) -> str:
        """The queue of a step pool (``queue:`` in a workflow); None is the default pool."""
        return self.steps if not pool else f"{self.steps}.{check_pool(pool)}"

    def is_step_queue(self, queue_name: str) -> bool:
        base = queue_name[:-3] if queue_name.endswith(".DQ") else queue_name
        return base == self.steps or base.startswith(self.steps + ".")

    def allowed_actors(self, queue_name: str) -> frozenset[str]:
        """Which actor names may be addressed on a queue (or its delay queue)."""
        base = queue_name[:-3] if queue_name.endswith(".DQ") else queue_name
        if base == self.ingress:
            return frozenset({START_WORKFLOW, CANCEL_RUN, RETRY_RUN})
        if base == self.coordinator:
            return frozenset({STEP_FINISHED, STEP_PROGRESS})
        if base == self.results:
            return frozenset({RECORD_RESULT, RECORD_DEAD_LETTER, WORKER_HEARTBEAT})
        if base == self.steps or base.startswith(self.steps + "."):
            return frozenset({EXECUTE_STEP})
        return frozenset()
