"""Every error MiniFlow raises on purpose, in one tree.

    MiniFlowError
    ├── ProtocolError                 protocol/: bytes and messages on the wire
    │   ├── DecodeFailed              bytes that are not a valid MiniFlow msgpack body (.code, .raw)
    │   ├── EncodeFailed              a value that cannot go on the wire (.path)
    │   └── MessageRejected           a decoded message that breaks the contract (.code, .field)
    ├── PersistenceError              persistence/: the database
    │   └── DatabaseUnavailable       could not reach or talk to the database (URL masked)
    ├── CoordinatorError              coordinator/: workflows and their runs
    │   ├── DefinitionError           a workflow file or spec that is not valid (.source, .step, .problem)
    │   └── UnknownWorkflow           no such workflow (or version) is deployed
    ├── ActorError                    actors/: running steps
    │   └── StepNotFound              a task name no loaded step module registers
    └── ConfigError                   ops/: settings from the environment or the command line

Every ``code`` is a stable, documented string (see PROTOCOL.md, "Rejection codes"); producers and
operators may match on it. No error message ever contains a payload or a secret.
"""

from __future__ import annotations


class MiniFlowError(Exception):
    """Root of every error MiniFlow raises on purpose."""


# -- protocol ------------------------------------------------------------------------------------
class ProtocolError(MiniFlowError):
    """Something on the wire is wrong."""


class DecodeFailed(ProtocolError):
    """Bytes that cannot be decoded into a MiniFlow message body.

    ``raw`` keeps (a bounded prefix of) the bytes for archiving; it is never part of ``str()``.
    """

    def __init__(self, code: str, detail: str, raw: bytes = b"") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.raw = raw


class EncodeFailed(ProtocolError):
    """A value that cannot be put on the wire (msgpack-compatible, JSON-compatible data only)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"cannot encode {path}: {problem}")
        self.path = path
        self.problem = problem


class MessageRejected(ProtocolError):
    """A well-formed message that breaks the contract: wrong fields, unknown workflow, ..."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.field = field


# -- persistence ---------------------------------------------------------------------------------
class PersistenceError(MiniFlowError):
    """Something in the database layer went wrong."""


class DatabaseUnavailable(PersistenceError):
    """The database could not be reached; the message names the (masked) URL."""


# -- coordinator ---------------------------------------------------------------------------------
class CoordinatorError(MiniFlowError):
    """Something about a workflow or a run is wrong."""


class DefinitionError(CoordinatorError):
    """A workflow definition that is not valid: names the source file, the step and the problem."""

    def __init__(self, source: str, problem: str, step: str | None = None) -> None:
        where = f"{source}: step {step!r}: " if step else f"{source}: "
        super().__init__(where + problem)
        self.source = source
        self.step = step
        self.problem = problem


class UnknownWorkflow(CoordinatorError):
    """No workflow (or no such version of it) is deployed."""

    def __init__(self, name: str, version: int | None = None) -> None:
        what = f"workflow {name!r}" + (f" version {version}" if version is not None else "")
        super().__init__(f"{what} is not deployed")
        self.name = name
        self.version = version


# -- actors --------------------------------------------------------------------------------------
class ActorError(MiniFlowError):
    """Something went wrong in an actor or the step registry."""


class StepNotFound(ActorError):
    """An executor was asked to run a task that none of its loaded step modules registers."""


# -- ops -----------------------------------------------------------------------------------------
class ConfigError(MiniFlowError):
    """A setting from the environment or the command line is missing or invalid."""
