"""Least-privilege RabbitMQ users for one MiniFlow namespace: the broker as a second wall.

    user            configure            write                       read
    <ns>-core       every <ns>.* queue   <ns>.* and the default      every <ns>.* queue
                    and exchange         exchange
    <ns>-executor   the step queues      the default exchange        the step queues
    <ns>-producer   nothing              the exchange <ns>.ingress   nothing

RabbitMQ checks a publish against the *exchange*: a user who may write to the default exchange can
reach every queue by its name. Producers therefore publish to the exchange ``<ns>.ingress`` (bound
to the ingress queue) and have no right on the default exchange, so the broker refuses their
publish to any other queue. Executors publish through the default exchange (dramatiq does) and
may reach other queues, where signatures stop them (docs/security.md); they may read and declare
their step queues only, so they cannot consume results, starts or another pool's steps, nor delete
a queue they do not own.

:func:`plan` makes the users with fresh passwords; :func:`commands` is the ``rabbitmqctl`` argv of
each step, which ``miniflow broker setup`` prints as a script or runs.
"""

from __future__ import annotations

import re
import secrets
import shlex
import string
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from miniflow.protocol.names import QueueNames


@dataclass(frozen=True)
class BrokerUser:
    role: str
    name: str
    password: str = field(repr=False)
    configure: str
    write: str
    read: str


PASSWORD_ALPHABET = string.ascii_letters + string.digits


def new_password(length: int = 32) -> str:
    """A random password of letters and digits (about 190 bits).

    Only letters and digits: a password that begins with ``-`` is read by ``rabbitmqctl`` as an
    option, and one with ``%``, ``@`` or ``/`` must be quoted in an AMQP URL."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def plan(namespace: str, *, prefix: str | None = None) -> list[BrokerUser]:
    names = QueueNames(namespace)
    ns, steps = re.escape(names.namespace), re.escape(names.steps)
    base = prefix or names.namespace
    return [
        BrokerUser("core", f"{base}-core", new_password(), f"^{ns}\\..*$",
                   f"^({ns}\\..*|amq\\.default)$", f"^{ns}\\..*$"),
        BrokerUser("executor", f"{base}-executor", new_password(), f"^{steps}(\\..*)?$",
                   "^amq\\.default$", f"^{steps}(\\..*)?$"),
        BrokerUser("producer", f"{base}-producer", new_password(), "^$",
                   f"^{re.escape(names.ingress)}$", "^$"),
    ]


def commands(vhost: str, users: list[BrokerUser]) -> list[list[str]]:
    """The rabbitmqctl arguments, in order (the vhost first, then each user and its rights)."""
    steps = [["add_vhost", vhost]]
    for user in users:
        steps.append(["add_user", user.name, user.password])
        steps.append(["set_permissions", "-p", vhost, user.name, user.configure, user.write, user.read])
    return steps


def script(vhost: str, users: list[BrokerUser], ctl: str = "rabbitmqctl") -> str:
    """A POSIX shell script of the steps; re-running it resets the passwords. It holds secrets."""
    lines = ["#!/bin/sh", f"# MiniFlow broker users for vhost {vhost} (miniflow broker setup). It holds passwords:",
             "# run it once, then delete it.", "set -e",
             f"{ctl} add_vhost {shlex.quote(vhost)} 2>/dev/null || true  # it may exist already"]
    for user in users:
        name, password = shlex.quote(user.name), shlex.quote(user.password)
        lines.append(f"{ctl} add_user {name} {password} 2>/dev/null || {ctl} change_password {name} {password}")
        lines.append(f"{ctl} set_permissions -p {shlex.quote(vhost)} {name} {shlex.quote(user.configure)} "
                     f"{shlex.quote(user.write)} {shlex.quote(user.read)}")
    return "\n".join(lines) + "\n"


def url_for(base_url: str, user: BrokerUser, vhost: str) -> str:
    """The broker URL of a user: the host, port and scheme of ``base_url``, this user and vhost."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    query = f"?{parts.query}" if parts.query else ""
    return (f"{parts.scheme or 'amqp'}://{quote(user.name, safe='')}:{quote(user.password, safe='')}@{host}{port}/"
            f"{quote(vhost, safe='')}{query}")
