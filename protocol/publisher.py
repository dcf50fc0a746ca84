"""A small pika publisher for Python producers: no dramatiq, no MiniFlow server code.

It does exactly what PROTOCOL.md asks of any producer: build the envelope, encode it with msgpack,
publish it persistently to the ingress exchange with the ingress queue as routing key, with
publisher confirms and ``mandatory`` set, and check passively that the queue exists. With a key
(a client key of role producer or operator) it signs each body in the AMQP headers.

    with Publisher("amqp://guest:guest@127.0.0.1:5672/%2F") as pub:
        message_id = pub.start_workflow("csv-report", params={"region": "EU"})
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import pika
import pika.exceptions

from .auth import ClientKey
from .codec import pack
from .envelope import envelope
from .errors import BrokerUnavailable
from .messages import CancelRun, RetryRun, StartWorkflow
from .names import CANCEL_RUN, RETRY_RUN, START_WORKFLOW, QueueNames

# A connection that is gone (not a refusal): worth one more try on a new connection.
LOST_CONNECTION = (pika.exceptions.StreamLostError, pika.exceptions.ConnectionClosed,
                   pika.exceptions.ConnectionWrongStateError, pika.exceptions.ChannelWrongStateError)


class Publisher:
    """Publishes start/cancel messages to a namespace's ingress queue with confirms. Every failure
    to reach the broker or to have a publish confirmed is raised as BrokerUnavailable (pika's
    errors are translated here)."""

    def __init__(self, url: str, namespace: str = "miniflow", *, connect_timeout: float = 10.0,
                 key: ClientKey | None = None) -> None:
        self.names = QueueNames(namespace)
        self.key = key  # signs every body (headers x-miniflow-key / x-miniflow-mac): see protocol/auth.py
        params = pika.URLParameters(url)
        params.blocked_connection_timeout = connect_timeout
        params.socket_timeout = connect_timeout
        self._params = params
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _open(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            try:
                self._connection = pika.BlockingConnection(self._params)
                channel = self._connection.channel()
                channel.confirm_delivery()
                channel.queue_declare(self.names.ingress, passive=True)
                channel.exchange_declare(self.names.ingress, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self.close()
                raise BrokerUnavailable(f"queue or exchange {self.names.ingress!r} does not exist: start a coordinator "
                                        f"worker for namespace {self.names.namespace!r} first") from exc
            except pika.exceptions.AMQPError as exc:
                self.close()
                raise BrokerUnavailable(f"cannot reach the broker at {self._params.host}:{self._params.port}: "
                                    f"{type(exc).__name__}") from exc
            self._channel = channel
        return self._channel

    def check(self) -> None:
        """Connect (if not connected) and check that the ingress queue and exchange exist;
        BrokerUnavailable when not."""
        self._open()

    def publish(self, actor_name: str, payload: dict[str, Any], *, message_id: str | None = None,
                options: dict[str, Any] | None = None, priority: int = 0) -> str:
        """Publish one message to the ingress queue; returns its message id once confirmed."""
        body = envelope(self.names.ingress, actor_name, payload, message_id=message_id, options=options)
        packed = pack(body)
        headers = self.key.headers(packed) if self.key else None
        try:
            self._send(packed, headers, priority)
        except LOST_CONNECTION:
            # The connection died since the last publish (a broker restart, an idle cut): one more
            # try on a new one. The same body (the same message id and idempotency key) twice is one
            # start, cancel or retry, so a publish that did arrive unconfirmed changes nothing.
            self.close()
            self._publish_again(body, packed, headers, priority)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            raise BrokerUnavailable(f"broker refused message {body['message_id']}: {type(exc).__name__}") from exc
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise BrokerUnavailable(f"publish of {body['message_id']} not confirmed: {type(exc).__name__}") from exc
        return str(body["message_id"])

    def _publish_again(self, body: dict[str, Any], packed: bytes, headers: dict[str, Any] | None,
                       priority: int) -> None:
        try:
            self._send(packed, headers, priority)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            raise BrokerUnavailable(f"broker refused message {body['message_id']}: {type(exc).__name__}") from exc
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise BrokerUnavailable(f"publish of {body['message_id']} not confirmed: {type(exc).__name__}") from exc

    def _send(self, packed: bytes, headers: dict[str, Any] | None, priority: int) -> None:
        self._open().basic_publish(
            exchange=self.names.ingress,  # the ingress exchange: a producer's broker user may write only there
            routing_key=self.names.ingress,
            body=packed,
            properties=pika.BasicProperties(delivery_mode=2, priority=priority or None,
                                            content_type="application/x-msgpack", headers=headers),
            mandatory=True,
        )

    def start_workflow(self, workflow: str, *, params: dict[str, Any] | None = None,
                       version: int | None = None, idempotency_key: str | None = None,
                       priority: int = 0, traceparent: str | None = None) -> str:
        start = StartWorkflow(workflow=workflow, version=version, params=dict(params or {}),
                              idempotency_key=idempotency_key, priority=priority)
        start.check()
        payload = {k: v for k, v in start.to_payload().items() if v is not None}
        options = {"traceparent": traceparent} if traceparent else None
        return self.publish(START_WORKFLOW, payload, options=options, priority=priority)

    def cancel_run(self, run_id: str, reason: str = "") -> str:
        return self.publish(CANCEL_RUN, CancelRun(run_id=run_id, reason=reason).to_payload())

    def retry_run(self, run_id: str) -> str:
        return self.publish(RETRY_RUN, RetryRun(run_id=run_id).to_payload())

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass
