"""Every error MiniFlow raises on purpose, in one tree.

    MiniFlowError
    ├── ProtocolError                 protocol/: bytes and messages on the wire
    │   ├── DecodeFailed              bytes that are not a valid MiniFlow msgpack body (.code, .raw)
    │   ├── EncodeFailed              a value that cannot go on the wire (.path)
    │   └── MessageRejected           a decoded message that breaks the contract (.code, .field)
    ├── BrokerUnavailable             could not reach RabbitMQ, or a publish was not confirmed (URL masked)
    ├── PersistenceError              persistence/: the database
    │   ├── DatabaseUnavailable       could not reach or talk to the database (URL masked)
    │   ├── DataRejected              the database refused a value (too long, out of range): the input's fault
    │   ├── VersionConflict           a workflow version number already stored with another definition
    │   ├── SealError                 a sealed secret param that cannot be opened (its key is missing)
    │   └── ArtifactError             the artifact store (persistence.artifacts), the file system layer
    │       ├── ArtifactRefInvalid    a reference that is not valid (.field, .problem)
    │       ├── ArtifactNotFound      no artifact of this digest in the store (.digest)
    │       ├── ArtifactCorrupt       stored bytes whose checksum or size is not the reference's (.digest)
    │       ├── ArtifactTooLarge      over the store's max_bytes, or a reader's limit
    │       └── ArtifactStoreUnavailable  the store's file system failed or cannot be reached (URL masked)
    ├── CoordinatorError              coordinator/: workflows and their runs
    │   ├── DefinitionError           a workflow file or spec that is not valid (.source, .step, .problem)
    │   └── ExpressionError           an expression (coordinator.expressions) or a JSONPath that cannot be used
    ├── ActorError                    actors/: running steps
    │   ├── StepNotFound              a task name no loaded step module registers
    │   └── StepFailed                a step attempt failed, as it is recorded (.error_type, .message)
    │       ├── StepTimedOut          it ran past its timeout (recorded as "Timeout")
    │       ├── StepCrashed           it killed the process running it (recorded as "Poison")
    │       ├── StepLost              no result came within its timeout and a grace (recorded as "Lost")
    │       └── OutputNotPlainData    it returned something that cannot be stored and passed on
    ├── ConfigError                   ops/: settings from the environment or the command line
    ├── ScenarioError                 a test-engine scenario file that is not valid (.source, .line, .message)
    │   └── ScenarioFailed            a scenario case that failed, as the pytest plugin reports it (.result)
    ├── ApiError                      an HTTP API answer other than success (.status, .code, .details),
    │                                 raised by the API (as the answer) and by miniflow.Client (from one)
    └── WaitTimedOut                  a wait for a run or a condition ran past its deadline (also a TimeoutError)

Lower-level errors are translated once, where they enter MiniFlow: SQLAlchemy's in
``persistence.db.Database``, pika's in ``protocol.publisher`` and dramatiq's in ``actors.broker``;
the command line maps the tree to exit codes in one place (``ops.cli.main``).

Every ``code`` is a stable, documented string (``protocol.codes.Reason``, listed in PROTOCOL.md);
producers and operators may match on it. No error message ever contains a payload or a secret.
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


# -- the broker ----------------------------------------------------------------------------------
class BrokerUnavailable(MiniFlowError):
    """RabbitMQ could not be reached, or did not confirm a publish; the message names the (masked) URL
    or the queue, never a payload."""


# -- persistence ---------------------------------------------------------------------------------
class PersistenceError(MiniFlowError):
    """Something in the database layer went wrong."""


class DatabaseUnavailable(PersistenceError):
    """The database could not be reached; the message names the (masked) URL."""


class DataRejected(PersistenceError):
    """The database refused a value of a statement (too long for its column, out of range, not valid
    for its type): the input is at fault, so retrying cannot help."""


class VersionConflict(PersistenceError):
    """A workflow version number that is already stored with a different definition (versions are
    immutable)."""


class SealError(PersistenceError):
    """A sealed secret param that cannot be opened: its data key is not configured, or it was altered."""


class ArtifactError(PersistenceError):
    """Something about an artifact or the artifact store is wrong."""


class ArtifactRefInvalid(ArtifactError):
    """A reference that is not valid: names the field and the problem, never the whole value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"artifact reference: {field} {problem}")
        self.field = field
        self.problem = problem


class ArtifactNotFound(ArtifactError):
    """No artifact with this digest is in the store (never stored, or collected by gc)."""

    def __init__(self, digest: str, store: str) -> None:
        super().__init__(f"artifact {digest} is not in the artifact store {store}")
        self.digest = digest


class ArtifactCorrupt(ArtifactError):
    """The stored bytes are not the artifact's: another checksum or size than its reference's."""

    def __init__(self, digest: str, problem: str) -> None:
        super().__init__(f"artifact {digest} is corrupt: {problem}")
        self.digest = digest


class ArtifactTooLarge(ArtifactError):
    """Content above the store's ``max_bytes`` (a put) or above the caller's ``limit`` (a read)."""


class ArtifactStoreUnavailable(ArtifactError):
    """The store's file system failed or could not be reached; the message names the masked URL."""


# -- coordinator ---------------------------------------------------------------------------------
class CoordinatorError(MiniFlowError):
    """Something about a workflow or a run is wrong."""


class DefinitionError(CoordinatorError):
    """A workflow definition that is not valid: names the source file, the step and the problem.
    One error may carry several problems (``problems``, one line each in ``str()``)."""

    def __init__(self, source: str, problem: str, step: str | None = None) -> None:
        where = f"{source}: step {step!r}: " if step else f"{source}: "
        super().__init__(where + problem)
        self.source = source
        self.step = step
        self.problem = problem
        self.problems: list[DefinitionError] = [self]

    @classmethod
    def several(cls, problems: list[DefinitionError]) -> DefinitionError:
        """One error for all the problems of a definition (the first one's source and step)."""
        if len(problems) == 1:
            return problems[0]
        first = problems[0]
        combined = cls(first.source, first.problem, first.step)
        combined.args = ("\n".join(str(p) for p in problems),)
        combined.problems = list(problems)
        return combined


# -- actors --------------------------------------------------------------------------------------
class ActorError(MiniFlowError):
    """Something went wrong in an actor or the step registry."""


class StepNotFound(ActorError):
    """An executor was asked to run a task that none of its loaded step modules registers."""


class StepFailed(ActorError):
    """A step attempt failed. ``error_type`` is what the attempt records as its type (the step's
    exception type name, or one of MiniFlow's: Timeout, Poison, ...); ``str()`` is the recorded
    error text."""

    error_type = "StepFailed"

    def __init__(self, message: str, error_type: str | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback  # the step's own traceback, when it raised (never part of str())
        if error_type is not None:
            self.error_type = error_type


class StepTimedOut(StepFailed):
    """The step ran past its timeout (in the worker thread or in an isolated child process)."""

    error_type = "Timeout"


class StepCrashed(StepFailed):
    """The step killed the (child) process running it: a poison step."""

    error_type = "Poison"


class StepLost(StepFailed):
    """No result came for an attempt within its timeout plus a grace period: the reconciler records
    it as lost."""

    error_type = "Lost"


class OutputNotPlainData(StepFailed):
    """The step returned something that cannot be stored and passed on (not JSON-compatible, or
    too large)."""

    error_type = "OutputNotPlainData"

    def __init__(self, message: str) -> None:
        super().__init__(f"OutputNotPlainData: {message}")


# -- ops -----------------------------------------------------------------------------------------
class ConfigError(MiniFlowError):
    """A setting from the environment or the command line is missing or invalid."""


class ApiError(MiniFlowError):
    """An answer of the HTTP API other than success: the HTTP status, a stable code, a message for
    people (never a secret) and optional details. ``status`` 0: the API could not be reached."""

    def __init__(self, status: int, code: str, message: str, details: object = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}" if self.status else f"{self.code}: {self.message}"


class WaitTimedOut(MiniFlowError, TimeoutError):
    """A wait for a run (or any polled condition) ran past its deadline; ``what`` names it."""

    def __init__(self, what: str, timeout: float, state: str | None = None) -> None:
        super().__init__(f"timed out after {timeout:g}s waiting for {what}" + (f" ({state})" if state else ""))
        self.what = what
        self.timeout = timeout
        self.state = state
