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

from miniflow.protocol.auth import SIG_OPTION, KeySource, canonical


class Signing(Middleware):
    def __init__(self, keys: KeySource) -> None:
        self.keys = keys

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        if SIG_OPTION in message.options:
            return
        signer = self.keys.signer()
        if signer is not None:
            message.options[SIG_OPTION] = signer.sign(canonical(
                message.queue_name, message.actor_name, message.message_id, message.message_timestamp,
                message.args, message.kwargs, message.options))
