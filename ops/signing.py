"""Which keys a process signs and checks messages with, from its settings and roles.

    MINIFLOW_AUTH=off              none: messages are neither signed nor checked (a warning says so)
    coordinator, results, timer    the core's keys from the database (sealed with the data key)
    executor alone                 the core's public keys (MINIFLOW_CORE_PUBLIC_KEYS) to check step
                                   messages, and its own client key (MINIFLOW_KEY) to sign what it sends
"""

from __future__ import annotations

import logging

from miniflow.persistence import Database
from miniflow.persistence.keys import DatabaseKeys
from miniflow.protocol.auth import EXECUTOR, KeySource, StaticKeys
from miniflow.protocol.errors import ConfigError

from .settings import Settings

logger = logging.getLogger("miniflow.runtime")
OPEN_WARNING = ("message authentication is off (MINIFLOW_AUTH=off): anyone who may publish to the broker's "
                "vhost can run steps, record results, and start, cancel or retry runs")


def core_keys(settings: Settings, db: Database) -> DatabaseKeys | None:
    """The keys of a core process (None with MINIFLOW_AUTH=off); ConfigError when there is no core key."""
    if not settings.auth:
        logger.warning(OPEN_WARNING)
        return None
    keys = DatabaseKeys(db, settings.data_keys)
    keys.require_signer()
    return keys


def executor_keys(settings: Settings) -> KeySource | None:
    """The keys of an executor-only process (None with MINIFLOW_AUTH=off)."""
    if not settings.auth:
        logger.warning(OPEN_WARNING)
        return None
    if not settings.core_public_keys or settings.client_key is None:
        raise ConfigError("an executor checks that step messages come from the core and signs what it sends: set "
                          "MINIFLOW_CORE_PUBLIC_KEYS (`miniflow keys core public`) and MINIFLOW_KEY (a key of role "
                          "executor: `miniflow keys create --name NAME --role executor`), or MINIFLOW_AUTH=off")
    own = settings.client_key
    return StaticKeys(public=settings.core_public_keys, own=type(own)(own.kid, EXECUTOR, own.mac_key))
