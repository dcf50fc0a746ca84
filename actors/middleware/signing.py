"""Signs every message this process sends (protocol/auth.py), just before it is published.

A message that carries a signature already keeps it: it is one this process consumed and now
re-publishes (a dramatiq retry, a delay queue moving it on, an executor handing a step back), and
that signature still covers it, since it covers what the message means and not how it moves. A
message a core node consumed with a producer's header MAC and re-publishes is signed as core.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from miniflow.protocol.auth import SIG_OPTION, CoreKey, KeySource, canonical
from miniflow.protocol.names import QueueNames


class Signing(Middleware):
    def __init__(self, keys: KeySource, names: QueueNames) -> None:
        self.keys = keys
        self.names = names

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        if SIG_OPTION in message.options:
            return
        signer = self.keys.signer()
        if signer is None:
            return
        data = canonical(message.queue_name, message.actor_name, message.message_id, message.message_timestamp,
                         message.args, message.kwargs, message.options)
        # The core signs step messages with its public-key signature (executors check it) and the
        # rest, which only core processes consume, with the cheaper core MAC.
        if isinstance(signer, CoreKey) and not self.names.is_step_queue(message.queue_name):
            message.options[SIG_OPTION] = signer.mac(data)
        else:
            message.options[SIG_OPTION] = signer.sign(data)
