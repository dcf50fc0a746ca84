"""The wire contract of MiniFlow, and the small pure pieces every layer shares.

    messages   the envelope and the message types, with validation
    codec      the strict, bounded msgpack codec
    codes      the stable reason codes of rejected messages
    names      queue and actor names of a namespace
    states     run and step states
    errors     the one error tree of MiniFlow
    masking    secrets out of text: URLs, secret params
    clock      the real clocks (code that decides takes one as a parameter)
    publisher  a pika publisher for Python producers (the only I/O here; imported on its own)

Normative text for producers in any language: PROTOCOL.md.
"""

from .codec import MAX_MESSAGE_BYTES, pack, unpack
from .codes import Reason
from .envelope import check_envelope, payload_of
from .errors import (
    ActorError,
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
    StepNotFound,
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
)
from .names import QueueNames
from .states import RunStatus, StepStatus

__all__ = [
    "MAX_MESSAGE_BYTES", "PROTOCOL_VERSION", "ActorError", "BrokerUnavailable", "CancelRun", "ConfigError",
    "CoordinatorError", "DatabaseUnavailable", "DeadLetterReport", "DecodeFailed", "DefinitionError",
    "EncodeFailed", "MessageRejected", "MiniFlowError", "PersistenceError", "ProtocolError", "QueueNames", "Reason",
    "RetryRun", "RunStatus", "StartWorkflow", "StepFinished", "StepNotFound", "StepResult", "StepStatus", "StepTask",
    "check_envelope", "pack", "payload_of", "unpack",
]
