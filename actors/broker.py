"""Broker set-up: RabbitMQ (publisher confirms on, priorities, guarded consumers) or embedded.

Both brokers route every consumed body through :class:`~actors.guard.Guard` before dramatiq
decodes it, so bad input is dead-lettered with a reason instead of crashing or looping. MiniFlow's
own sends go through :func:`publish`, where dramatiq's connection errors become BrokerUnavailable
(dramatiq's internals keep theirs, which its worker handles).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from queue import Empty
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.brokers.stub import StubBroker, _StubConsumer, _StubMessageProxy
from dramatiq.common import dq_name, q_name
from dramatiq.errors import BrokerConnectionError, QueueNotFound
from dramatiq.message import Message
from dramatiq.middleware import (
    AgeLimit,
    Middleware,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from miniflow.protocol.auth import KeySource, Verifier
from miniflow.protocol.errors import BrokerUnavailable
from miniflow.protocol.masking import mask_url
from miniflow.protocol.names import QueueNames

from . import encoder, redaction
from .guard import Guard
from .middleware.signing import Signing

logger = logging.getLogger("miniflow.runtime")
MAX_PRIORITY = 10
# Infrastructure retries only (a database restart, a lost connection): MiniFlow owns step retries.
# 120 retries with a 30 s cap ride out about an hour of outage before a message is dead-lettered.
INFRA_RETRIES = 120
INFRA_MIN_BACKOFF_MS = 500
INFRA_MAX_BACKOFF_MS = 30_000
DEFAULT_URL_OPTIONS = {"heartbeat": "30", "connection_attempts": "3", "retry_delay": "1",
                       "blocked_connection_timeout": "30"}


def default_middleware() -> list[Middleware]:
    return [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Retries(max_retries=INFRA_RETRIES, min_backoff=INFRA_MIN_BACKOFF_MS, max_backoff=INFRA_MAX_BACKOFF_MS),
    ]


def with_pika_defaults(url: str) -> str:
    """Add heartbeat / reconnect options to an AMQP URL unless it sets them itself."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in DEFAULT_URL_OPTIONS.items():
        query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


class _GuardedRabbitmqConsumer(_RabbitmqConsumer):
    def __init__(self, broker: GuardedRabbitmqBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.iterator = self._guarded(self.iterator)

    def __next__(self) -> Any:
        message = super().__next__()  # type: ignore[no-untyped-call]
        if message is not None:  # what the handler may hold in memory (``turns``)
            message.body_bytes = self.body_bytes
        return message

    def _guarded(self, frames: Any) -> Any:
        guard: Guard = self.broker.guard
        for method, properties, body in frames:
            if method is not None:
                self.body_bytes = len(body)
                rejection = guard.inspect(self.queue_name, body, properties.headers if properties else None)
                if rejection is not None:
                    # Dead-letter it now (we are on the consumer's own thread), then report.
                    self.channel.basic_nack(method.delivery_tag, requeue=False)
                    guard.report(self.broker, self.queue_name, rejection)
                    yield None, None, None
                    continue
            yield method, properties, body


class GuardedRabbitmqBroker(RabbitmqBroker):
    """RabbitmqBroker whose consumers dead-letter bad bodies with a reason.

    ``owns`` says which queues this process declares. dramatiq declares every queue it publishes
    to, which needs the broker's "configure" right on it (and with it the right to delete it); an
    executor alone owns only its step queues and publishes to the others as they are, so its
    broker user needs no rights on them but to publish (``miniflow broker setup``)."""

    def __init__(self, *, guard: Guard, owns: Callable[[str], bool] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard
        self.owns = owns

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _GuardedRabbitmqConsumer

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        if self.owns is None or self.owns(queue_name):
            super().declare_queue(queue_name, ensure=ensure)
            return
        canonical = q_name(queue_name)
        if canonical not in self.queues:  # known (so dramatiq may publish to it), never declared here
            self.queues.add(canonical)
            self.delay_queues.add(dq_name(canonical))


class _GuardedStubConsumer(_StubConsumer):
    def __init__(self, broker: EmbeddedBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker.queues[queue_name], broker.dead_letters_by_queue[queue_name], prefetch,  # type: ignore[no-untyped-call]
                         timeout)
        self.broker = broker
        self.queue_name = queue_name

    def __next__(self) -> Any:
        if not self.prefetch_semaphore.acquire(timeout=self.timeout / 1000):
            return None
        try:
            data = self.queue.get(timeout=self.timeout / 1000)
        except Empty:
            self.prefetch_semaphore.release()
            return None
        rejection = self.broker.guard.inspect(self.queue_name, data, getattr(data, "headers", None))
        if rejection is not None:
            self.queue.task_done()
            self.prefetch_semaphore.release()
            with self.broker.lock:
                self.broker.rejected_bodies.append((self.queue_name, data))
            self.broker.guard.report(self.broker, self.queue_name, rejection)
            return None
        proxy = _StubMessageProxy(Message.decode(data))
        proxy.body_bytes = len(data)  # type: ignore[attr-defined]
        if getattr(data, "redelivered", False):  # a redelivery the test engine simulates
            proxy.redelivered = True  # type: ignore[attr-defined]
        return proxy


class EmbeddedBroker(StubBroker):
    """dramatiq's in-memory broker, with MiniFlow's guard: the embedded mode (one process)."""

    def __init__(self, *, guard: Guard, middleware: list[Middleware] | None = None) -> None:
        super().__init__(middleware=middleware)
        self.guard = guard
        self.lock = threading.Lock()
        self.rejected_bodies: list[tuple[str, bytes]] = []
        # The test engine's hook on every message sent: it may hold a delayed one for its virtual
        # clock, drop or duplicate one (faults); it calls ``send`` for what goes on.
        self.interceptor: Interceptor | None = None

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        if self.interceptor is not None:
            return self.interceptor(message, delay, self.send)
        return self.send(message, delay)

    def send(self, message: Message[Any], delay: int | None = None) -> Message[Any]:
        """Enqueue as dramatiq's stub broker does, past the interceptor."""
        return super().enqueue(message, delay=delay)

    def redeliver(self, message: Message[Any]) -> None:
        """Put a message back on its queue marked redelivered, as RabbitMQ does when the consumer
        that held it died (the test engine's executor-killed and crash faults)."""
        self.queues[message.queue_name].put(Redelivered(message.encode()))

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> Any:
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)  # type: ignore[no-untyped-call]
        return _GuardedStubConsumer(self, queue_name, prefetch, timeout)

    def put_raw(self, queue_name: str, body: bytes, headers: dict[str, Any] | None = None) -> None:
        """Put raw bytes on a queue, as an outside producer could (for tests and tools), with the
        AMQP headers a RabbitMQ message would carry."""
        self.queues[queue_name].put(HeadedBody(body, headers) if headers else body)


class Redelivered(bytes):
    """A body that comes back from a consumer that died holding it."""

    redelivered = True


Interceptor = Callable[[Message[Any], "int | None", Callable[[Message[Any], "int | None"], Message[Any]]],
                       Message[Any]]


class HeadedBody(bytes):
    """A body with the AMQP headers it came with (the embedded broker's queues hold bytes)."""

    headers: dict[str, Any]

    def __new__(cls, body: bytes, headers: dict[str, Any]) -> HeadedBody:
        self = super().__new__(cls, body)
        self.headers = dict(headers)
        return self


def publish(broker: dramatiq.Broker, message: Message[Any], *, delay: int | None = None) -> None:
    """Send one message (confirmed on RabbitMQ); BrokerUnavailable when the broker cannot take it."""
    try:
        broker.enqueue(message, delay=delay)
    except BrokerConnectionError as exc:
        raise BrokerUnavailable(f"could not publish message {message.message_id} to {message.queue_name}: "
                                f"{type(exc).__name__}") from exc


def check_broker(url: str, timeout_s: float = 5.0) -> None:
    """Open and close one AMQP connection: BrokerUnavailable (URL masked, one line) when the broker
    does not answer, refuses the login or the virtual host. pika's own noise about it is muted."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = params.blocked_connection_timeout = timeout_s
    pika_log = logging.getLogger("pika")
    level = pika_log.level
    pika_log.setLevel(logging.CRITICAL + 1)
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach the broker at {mask_url(url)}: {_why(exc)}") from exc
    finally:
        pika_log.setLevel(level)


def wait_for_queues(url: str, queues: list[str], stop: threading.Event | None = None,
                    remind_s: float = 60.0) -> bool:
    """Wait until every queue exists (checked passively: no broker rights needed); False if
    ``stop`` is set first. An executor alone publishes to queues that a core process declares, so
    it waits for them, saying once (and then every ``remind_s``) what it waits for."""
    stop = stop or threading.Event()
    told = 0.0
    while True:
        missing = _missing_queue(url, queues)
        if missing is None:
            if told:
                logger.warning("the queues exist now: going on")
            return True
        if time.monotonic() - told >= remind_s:
            logger.warning("waiting for queue %r: start a coordinator and results worker of this namespace "
                           "(it declares the queues)", missing)
            told = time.monotonic()
        if stop.wait(1.0):
            return False


def _missing_queue(url: str, queues: list[str]) -> str | None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return queue
            channel.close()
        return None
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(f"cannot check the queues at {mask_url(url)}: {_why(exc)}") from exc
    finally:
        if connection.is_open:
            connection.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"its TLS certificate was not accepted ({exc.verify_message or exc.reason}); a private CA is "
                "trusted with SSL_CERT_FILE")
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "the login was refused (user or password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "access to the virtual host was refused"
    return type(exc).__name__


def make_broker(url: str | None, names: QueueNames, middleware: list[Middleware] | None = None, *,
                keys: KeySource | None = None, signed_starts: bool = False,
                owns: Callable[[str], bool] | None = None) -> dramatiq.Broker:
    """A RabbitMQ broker for an amqp(s):// URL, or the embedded broker when ``url`` is None.

    With ``keys`` (message authentication on) every message sent is signed and every message
    consumed must be signed by a sender that may send it; ``signed_starts`` extends that to starts.
    Installs the msgpack encoder process-wide and makes the broker dramatiq's global one.
    """
    encoder.install()
    redaction.install()
    guard = Guard(names, Verifier(keys, signed_starts=signed_starts) if keys is not None else None)
    chain = list(middleware) if middleware is not None else default_middleware()
    if keys is not None:
        chain.append(Signing(keys, names))
    broker: dramatiq.Broker
    if url is None:
        broker = EmbeddedBroker(guard=guard, middleware=chain)
    else:
        broker = GuardedRabbitmqBroker(guard=guard, url=with_pika_defaults(url), confirm_delivery=True,
                                       max_priority=MAX_PRIORITY, middleware=chain, owns=owns)
    dramatiq.set_broker(broker)
    return broker


def declare_topology(broker: dramatiq.Broker, names: QueueNames, pools: list[str] | tuple[str, ...] = (), *,
                     steps_only: bool = False) -> None:
    """Declare every MiniFlow queue of a namespace (so producers can publish before workers start),
    and the ingress exchange producers publish to; ``steps_only``: the step queues alone (an
    executor's)."""
    queues = [] if steps_only else [names.ingress, names.coordinator, names.results]
    queues += [names.steps] + [names.step_queue(p) for p in pools]
    for queue in queues:
        broker.declare_queue(queue, **({"ensure": True} if isinstance(broker, RabbitmqBroker) else {}))
    if isinstance(broker, RabbitmqBroker) and not steps_only:
        _declare_ingress_exchange(broker, names)


def _declare_ingress_exchange(broker: RabbitmqBroker, names: QueueNames) -> None:
    """The direct exchange ``<ns>.ingress``, bound to the ingress queue: producers publish there, so
    that their broker user may write to it and to nothing else (the default exchange reaches every
    queue)."""
    try:
        channel = broker.channel
        channel.exchange_declare(names.ingress, exchange_type="direct", durable=True)
        channel.queue_bind(names.ingress, names.ingress, routing_key=names.ingress)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"could not declare the ingress exchange {names.ingress!r}: {type(exc).__name__}") \
            from exc


def delete_topology(url: str, names: QueueNames, pools: Iterable[str] = ()) -> int:
    """Delete every queue of a namespace and of the given step pools (the tests and benchmarks clean up
    with it); returns how many."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    deleted = 0
    try:
        channel = connection.channel()
        for base in (names.ingress, names.coordinator, names.results, names.steps,
                     *(names.step_queue(p) for p in pools)):
            for suffix in ("", ".DQ", ".XQ"):
                try:
                    channel.queue_delete(base + suffix)
                    deleted += 1
                except pika.exceptions.ChannelClosedByBroker:
                    channel = connection.channel()
    finally:
        connection.close()
    return deleted
