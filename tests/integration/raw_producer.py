"""A producer with no MiniFlow code: pika + msgpack only, following protocol/PROTOCOL.md."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import pika


def publish_start(url: str, namespace: str, workflow: str, params: dict[str, Any], idempotency_key: str,
                  options: dict[str, Any] | None = None) -> str:
    queue = f"{namespace}.ingress"
    message_id = str(uuid.uuid4())
    body = msgpack.packb({
        "queue_name": queue,
        "actor_name": "start_workflow",
        "args": [{"v": 1, "workflow": workflow, "params": params, "idempotency_key": idempotency_key}],
        "kwargs": {},
        "options": options or {},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }, use_bin_type=True)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, passive=True)
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()
    return message_id


def publish_raw(url: str, queue: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, headers=headers),
                              mandatory=True)
    finally:
        connection.close()
