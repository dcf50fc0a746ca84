"""The queue monitor: per MiniFlow queue, its depth, ready vs unacknowledged, consumers, rates and the
age of its oldest message where that can be known.

Two sources, the better one when it is there:

    passive declares    always (plain AMQP, no plugin): ready messages and consumers per queue
    management API      when RabbitMQ's management plugin is enabled (`rabbitmq-plugins enable
                        rabbitmq_management`, port 15672, the broker URL's user; or
                        MINIFLOW_RABBITMQ_API_URL): unacknowledged messages, publish and deliver rates,
                        and the oldest message's age where the message carries a timestamp

For step queues the age of the oldest waiting step is also known from the database (the queued time
of the oldest queued step that no executor reported running), whichever source the counts came from.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit
from urllib.request import Request, urlopen

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

from miniflow.protocol.errors import BrokerUnavailable
from miniflow.protocol.masking import mask_url
from miniflow.protocol.names import QueueNames

MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT_S = 3.0
ROLE_ORDER = ("ingress", "coordinator", "results", "steps", "delay", "dead")


@dataclass(frozen=True)
class QueueStat:
    name: str
    role: str  # ingress, coordinator, results, steps (a step pool), delay (.DQ), dead (.XQ)
    pool: str | None  # the step pool of a steps queue ("" for the default pool)
    exists: bool
    ready: int | None = None  # messages waiting for a consumer
    unacked: int | None = None  # delivered to a consumer, not yet acknowledged (management API only)
    consumers: int | None = None
    publish_per_s: float | None = None  # management API only
    deliver_per_s: float | None = None  # management API only
    oldest_age_s: float | None = None  # where it can be known

    @property
    def depth(self) -> int | None:
        if self.ready is None:
            return None
        return self.ready + (self.unacked or 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "depth": self.depth}


@dataclass(frozen=True)
class QueueReport:
    queues: list[QueueStat]
    source: str  # "management" or "passive"
    management: str  # how the management API was found: its URL (masked), or why not
    broker: str  # the broker URL, masked

    def get(self, name: str) -> QueueStat | None:
        return next((q for q in self.queues if q.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "management": self.management, "broker": self.broker,
                "queues": [q.to_dict() for q in self.queues]}


def miniflow_queues(names: QueueNames, pools: Iterable[str] = ()) -> list[tuple[str, str, str | None]]:
    """(queue, role, pool) of every queue of a namespace: the four base queues, each step pool's, and the
    delay (.DQ) and dead-letter (.XQ) queue beside each."""
    base: list[tuple[str, str, str | None]] = [
        (names.ingress, "ingress", None), (names.coordinator, "coordinator", None),
        (names.results, "results", None), (names.steps, "steps", "")]
    base += [(names.step_queue(p), "steps", p) for p in sorted(set(pools)) if p]
    out = list(base)
    for queue, _role, pool in base:
        out.append((queue + ".DQ", "delay", pool))
        out.append((queue + ".XQ", "dead", pool))
    return out


def passive_counts(broker_url: str, queues: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    """(ready messages, consumers) per queue by passive declares; None for a queue that does not exist.
    BrokerUnavailable (URL masked) when the broker does not answer."""
    params = pika.URLParameters(broker_url)
    params.connection_attempts, params.retry_delay, params.socket_timeout = 1, 0, 5
    params.blocked_connection_timeout = 5
    try:
        connection = pika.BlockingConnection(params)
    except AMQPError as exc:
        raise BrokerUnavailable(f"broker {mask_url(broker_url)} does not answer: {type(exc).__name__}") from None
    out: dict[str, tuple[int, int] | None] = {}
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                ok = channel.queue_declare(queue, passive=True)
                out[queue] = (int(ok.method.message_count), int(ok.method.consumer_count))
            except ChannelClosedByBroker:  # 404: no such queue; the channel is closed, take a new one
                out[queue] = None
                channel = connection.channel()
    finally:
        try:
            connection.close()
        except AMQPError:
            pass
    return out


def management_url(broker_url: str, configured: str | None = None) -> str:
    """The management API base URL: the configured one, or the broker's host on port 15672."""
    if configured:
        return configured.rstrip("/")
    parts = urlsplit(broker_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    return f"{scheme}://{parts.hostname or 'localhost'}:{MANAGEMENT_PORT}"


_MISSED: dict[str, float] = {}  # management API URL -> when it last did not answer (monotonic)
RETRY_MANAGEMENT_S = 60.0  # a long-running process asks a management API that did not answer again after this


def management_counts(broker_url: str, api_url: str, timeout_s: float = MANAGEMENT_TIMEOUT_S
                      ) -> dict[str, dict[str, Any]] | None:
    """The vhost's queues from the management API, by name; None when it is not reachable or refuses
    the broker URL's user (then the passive declares serve). After a miss, the same process does not
    ask again for RETRY_MANAGEMENT_S."""
    missed = _MISSED.get(api_url)
    if missed is not None and time.monotonic() - missed < RETRY_MANAGEMENT_S:
        return None
    found = _management_counts(broker_url, api_url, timeout_s)
    if found is None:
        _MISSED[api_url] = time.monotonic()
    else:
        _MISSED.pop(api_url, None)
    return found


def _management_counts(broker_url: str, api_url: str, timeout_s: float) -> dict[str, dict[str, Any]] | None:
    # urllib rather than httpx: no TLS context is built for a plain http:// API, which matters because
    # a worker makes this call from its metrics thread, beside its busy worker threads.
    parts = urlsplit(broker_url)
    vhost = unquote(parts.path[1:]) if parts.path and parts.path != "/" else "/"
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    columns = ("name,messages_ready,messages_unacknowledged,consumers,head_message_timestamp,"
               "message_stats.publish_details.rate,message_stats.deliver_get_details.rate")
    request = Request(f"{api_url}/api/queues/{quote(vhost, safe='')}?{urlencode({'columns': columns})}",
                      headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - the URL is the operator's, http(s) only
            if answer.status != 200:
                return None
            rows = json.loads(answer.read(8 * 1024 * 1024))
    except (OSError, ValueError):  # refused, timed out, 401/404 (HTTPError is an OSError), not JSON
        return None
    return {str(r.get("name")): r for r in rows if isinstance(r, dict)} if isinstance(rows, list) else None


def queue_report(broker_url: str, names: QueueNames, pools: Iterable[str] = (), *,
                 management: str | None = None,
                 oldest_steps: dict[str, float] | None = None) -> QueueReport:
    """The queue monitor's view of a namespace. ``oldest_steps``: age in seconds of the oldest waiting
    step per step queue (from the database), used where the broker cannot tell."""
    wanted = miniflow_queues(names, pools)
    api = management_url(broker_url, management)
    found = management_counts(broker_url, api)
    oldest_steps = oldest_steps or {}
    stats: list[QueueStat] = []
    if found is not None:
        now_s = time.time()
        for queue, role, pool in wanted:
            row = found.get(queue)
            if row is None:
                stats.append(QueueStat(queue, role, pool, exists=False))
                continue
            rates = row.get("message_stats") or {}
            head = row.get("head_message_timestamp")
            age = now_s - float(head) if isinstance(head, (int, float)) and head > 0 else oldest_steps.get(queue)
            stats.append(QueueStat(queue, role, pool, exists=True, ready=_int(row.get("messages_ready")),
                                   unacked=_int(row.get("messages_unacknowledged")),
                                   consumers=_int(row.get("consumers")),
                                   publish_per_s=_rate(rates.get("publish_details")),
                                   deliver_per_s=_rate(rates.get("deliver_get_details")),
                                   oldest_age_s=round(age, 3) if age is not None else None))
        return QueueReport(stats, "management", mask_url(api), mask_url(broker_url))
    counts = passive_counts(broker_url, [q for q, _, _ in wanted])
    for queue, role, pool in wanted:
        count = counts.get(queue)
        if count is None:
            stats.append(QueueStat(queue, role, pool, exists=False))
        else:
            age = oldest_steps.get(queue)
            stats.append(QueueStat(queue, role, pool, exists=True, ready=count[0], consumers=count[1],
                                   oldest_age_s=round(age, 3) if age is not None else None))
    why_not = f"not reachable at {mask_url(api)} (enable rabbitmq_management)"
    return QueueReport(stats, "passive", why_not, mask_url(broker_url))


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rate(details: Any) -> float | None:
    rate = details.get("rate") if isinstance(details, dict) else None
    return round(float(rate), 2) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None
