"""MiniFlow: durable DAG workflows on RabbitMQ and Postgres.

The surface step code and programs write against::

    from miniflow import StepContext, step   # step code
    from miniflow import Client              # programs that start and follow runs

    @step("csv.load")
    def load(ctx: StepContext) -> dict:
        ...

Every error MiniFlow raises on purpose derives from :class:`MiniFlowError` (the tree is drawn in
``miniflow.protocol.errors``). The layers live in subpackages, each importing only the ones below
it: ``miniflow.ops`` -> ``miniflow.actors`` -> ``miniflow.coordinator`` -> ``miniflow.persistence``
-> ``miniflow.protocol``.

Names are imported on first use, so ``import miniflow.protocol`` (all a Python producer needs)
does not load the broker and database stacks.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from .actors.registry import StepContext, step
    from .ops.client import Client, RunHandle, RunResult, StepResult
    from .protocol.errors import (
        ActorError,
        ApiError,
        BrokerUnavailable,
        ConfigError,
        CoordinatorError,
        DatabaseUnavailable,
        DecodeFailed,
        DefinitionError,
        EncodeFailed,
        MessageRejected,
        MiniFlowError,
        PersistenceError,
        ProtocolError,
        StepFailed,
        StepNotFound,
        VersionConflict,
        WaitTimedOut,
    )

_ERRORS = "miniflow.protocol.errors"
_WHERE = {
    "StepContext": "miniflow.actors.registry",
    "step": "miniflow.actors.registry",
    "Client": "miniflow.ops.client",
    "RunHandle": "miniflow.ops.client",
    "RunResult": "miniflow.ops.client",
    "StepResult": "miniflow.ops.client",
    "ActorError": _ERRORS,
    "ApiError": _ERRORS,
    "BrokerUnavailable": _ERRORS,
    "ConfigError": _ERRORS,
    "CoordinatorError": _ERRORS,
    "DatabaseUnavailable": _ERRORS,
    "DecodeFailed": _ERRORS,
    "DefinitionError": _ERRORS,
    "EncodeFailed": _ERRORS,
    "MessageRejected": _ERRORS,
    "MiniFlowError": _ERRORS,
    "PersistenceError": _ERRORS,
    "ProtocolError": _ERRORS,
    "StepFailed": _ERRORS,
    "StepNotFound": _ERRORS,
    "VersionConflict": _ERRORS,
    "WaitTimedOut": _ERRORS,
}

__all__ = [
    "ActorError",
    "ApiError",
    "Client",
    "BrokerUnavailable",
    "ConfigError",
    "CoordinatorError",
    "DatabaseUnavailable",
    "DecodeFailed",
    "DefinitionError",
    "EncodeFailed",
    "MessageRejected",
    "MiniFlowError",
    "PersistenceError",
    "ProtocolError",
    "RunHandle",
    "RunResult",
    "StepContext",
    "StepFailed",
    "StepNotFound",
    "StepResult",
    "VersionConflict",
    "WaitTimedOut",
    "__version__",
    "step",
]


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'miniflow' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
