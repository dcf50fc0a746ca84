"""The private RabbitMQ and Postgres of the fault tests: they live in the package (the test engine's
--private-services uses them too); this module keeps the tests' import path."""

from miniflow.ops.testengine.containers import DockerPostgres, DockerRabbitMQ, docker_reachable
from miniflow.ops.testengine.services import (
    Broker,
    Database,
    PrivatePostgres,
    PrivateRabbitMQ,
    create_database,
    free_port,
    port_open,
    start_broker,
    start_database,
)

__all__ = ["Broker", "Database", "DockerPostgres", "DockerRabbitMQ", "PrivatePostgres", "PrivateRabbitMQ",
           "create_database", "docker_reachable", "free_port", "port_open", "start_broker", "start_database"]
