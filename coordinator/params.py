"""A run's params: the workflow's declared defaults overlaid with the ones a start gives."""

from __future__ import annotations

from typing import Any

from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import MessageRejected

from .workflow import Workflow


def resolve_params(workflow: Workflow, given: dict[str, Any]) -> dict[str, Any]:
    """Run params: declared defaults overlaid with the given ones; unknown or missing ones rejected."""
    if workflow.params:
        unknown = sorted(set(given) - set(workflow.params))
        if unknown:
            raise MessageRejected(Reason.INVALID_PARAMS, f"workflow {workflow.name!r} has no param(s) {unknown} "
                                  f"(declared: {sorted(workflow.params)})", "params")
    params = {name: p.default for name, p in workflow.params.items() if not p.required or name in given}
    params.update(given)
    missing = sorted(name for name, p in workflow.params.items() if p.required and name not in given)
    if missing:
        raise MessageRejected(Reason.INVALID_PARAMS, f"workflow {workflow.name!r} needs param(s) {missing}",
                              "params")
    return params
