"""The wire contract of MiniFlow: message types, the msgpack codec, validation, names.

Pure code: the only I/O is the optional pika :class:`~protocol.publisher.Publisher` (imported on
its own, so that decoding never pulls in a network client). Normative text: PROTOCOL.md.
"""

from .codec import MAX_MESSAGE_BYTES, pack, unpack
from .errors import (
    ActorError,
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
    StepNotFound,
    UnknownWorkflow,
)
from .messages import (
    PROTOCOL_VERSION,
    CancelRun,
    DeadLetterReport,
    RetryRun,
    StartWorkflow,
    StepFinished,
    StepResult,
    StepTask,
    check_envelope,
    payload_of,
)
from .names import QueueNames

__all__ = [
    "MAX_MESSAGE_BYTES", "PROTOCOL_VERSION", "ActorError", "CancelRun", "ConfigError",
    "CoordinatorError", "DatabaseUnavailable", "DeadLetterReport", "DecodeFailed", "DefinitionError",
    "EncodeFailed", "MessageRejected", "MiniFlowError", "PersistenceError", "ProtocolError",
    "QueueNames", "RetryRun", "StartWorkflow", "StepFinished", "StepNotFound", "StepResult", "StepTask",
    "UnknownWorkflow", "check_envelope", "pack", "payload_of", "unpack",
]
