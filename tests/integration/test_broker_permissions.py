"""Broker permissions as a second wall (`miniflow broker setup`), on a private RabbitMQ node: the
three users run a workflow end to end with their least rights, and the broker itself refuses what
each may not do."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from miniflow.ops.broker_setup import commands, plan, url_for

from . import private_services as priv
from .conftest import ROOT, WorkerProcess, miniflow


@pytest.fixture
def locked(fault_env: dict[str, str], private_services: tuple[priv.Broker, priv.Database]) -> Iterator[dict[str, Any]]:
    """A fresh vhost and the three users of `broker setup`, applied to the private node."""
    broker, _ = private_services
    namespace = f"mfp_{uuid.uuid4().hex[:6]}"
    vhost = f"vh_{namespace}"
    users = plan(namespace)
    for step in commands(vhost, users):
        broker.rabbitmqctl(*step)
    urls = {u.role: url_for(broker.url, u, vhost) for u in users}
    env = dict(fault_env, MINIFLOW_NAMESPACE=namespace)
    assert miniflow(env, "deploy", str(ROOT / "examples" / "diamond.yaml")).returncode == 0
    try:
        yield {"env": env, "urls": urls, "namespace": namespace}
    finally:
        broker.rabbitmqctl("delete_vhost", vhost)
        for user in users:
            broker.rabbitmqctl("delete_user", user.name)


def refused(url: str, action: Any) -> bool:
    """Whether the broker answers the action on a fresh channel with 403 ACCESS_REFUSED."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        action(connection.channel())
    except pika.exceptions.ChannelClosedByBroker as exc:
        return bool(exc.reply_code == 403)
    finally:
        if connection.is_open:
            connection.close()
    return False


def test_least_privilege_users_run_a_workflow_and_the_broker_refuses_the_rest(locked, tmp_path: Path) -> None:
    env, urls, ns = locked["env"], locked["urls"], locked["namespace"]
    core = WorkerProcess(dict(env, MINIFLOW_BROKER_URL=urls["core"]),
                         ["--role", "coordinator", "--role", "results", "--threads", "4"], tmp_path / "core.log")
    executor = WorkerProcess(dict(env, MINIFLOW_BROKER_URL=urls["executor"]),
                             ["--steps", "examples.steps", "--threads", "4"], tmp_path / "exec.log")
    try:
        core.wait_ready()
        executor.wait_ready()
        # a producer with no right but to write the ingress exchange starts a run that completes
        started = miniflow(dict(env, MINIFLOW_BROKER_URL=urls["producer"]), "start", "diamond", "-p", "x=4",
                           "--wait", "--timeout", "90", "--json")
        assert started.returncode == 0, started.stderr + started.stdout
        assert json.loads(started.stdout)["status"] == "succeeded"
    finally:
        core.stop()
        executor.stop()
    body = b"\x80"

    def publish_to(queue: str) -> Any:
        def act(ch: Any) -> None:
            ch.confirm_delivery()
            ch.basic_publish("", queue, body)
        return act

    # the producer: no publish through the default exchange (so to no queue but via ingress), no reading
    assert refused(urls["producer"], publish_to(f"{ns}.results"))
    assert refused(urls["producer"], publish_to(f"{ns}.ingress"))
    assert refused(urls["producer"], lambda ch: ch.basic_get(f"{ns}.ingress"))
    assert refused(urls["producer"], lambda ch: ch.queue_delete(f"{ns}.ingress"))
    # the executor: it reads and declares its step queues only
    assert refused(urls["executor"], lambda ch: ch.basic_get(f"{ns}.results"))
    assert refused(urls["executor"], lambda ch: ch.basic_get(f"{ns}.ingress"))
    assert refused(urls["executor"], lambda ch: ch.queue_delete(f"{ns}.results"))
    assert not refused(urls["executor"], lambda ch: ch.basic_get(f"{ns}.steps"))
