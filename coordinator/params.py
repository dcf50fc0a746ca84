"""A run's params: the workflow's declared defaults overlaid with the ones a start gives, and the
secret ones sealed for the database."""

from __future__ import annotations

from typing import Any

from miniflow.persistence.sealing import KeyRing, seal_params
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


def sealed(workflow: Workflow, params: dict[str, Any], keys: KeyRing | None) -> dict[str, Any]:
    """The params as they are stored: secret ones sealed with ``keys``; MessageRejected (no_data_key)
    when some are given and there is no key."""
    secrets = workflow.secret_params()
    if keys is None and any(params.get(name) is not None for name in secrets):
        raise MessageRejected(Reason.NO_DATA_KEY, f"workflow {workflow.name!r} has secret params, and this "
                              "coordinator has no data key to store them sealed (MINIFLOW_DATA_KEY or "
                              "MINIFLOW_DATA_KEY_FILE)", "params")
    return seal_params(params, secrets, keys)
