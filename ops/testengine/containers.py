"""Private RabbitMQ and Postgres as containers (testcontainers, official images), used instead of
the installed server binaries when a Docker daemon is reachable (see services.py)."""

from __future__ import annotations

import os
from typing import Any

import psycopg2

from .services import free_port, port_open, wait_for


def docker_reachable() -> bool:
    """Whether testcontainers can reach a Docker daemon (asked once, quickly)."""
    if os.environ.get("MINIFLOW_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no client library, no socket, no daemon: all mean "no Docker"
        return False


class DockerPostgres:
    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer

        self.port = free_port()
        self.container: Any = PostgresContainer("postgres:15", username="postgres", password="postgres",
                                                dbname="postgres").with_bind_ports(5432, self.port)
        self.container.start()
        wait_for(self._answers, "the Postgres container")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres:postgres@127.0.0.1:{self.port}/{database}"

    def _answers(self) -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", password="postgres",
                             dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self) -> None:
        self.container.get_wrapped_container().stop(timeout=30)

    def start(self) -> None:
        self.container.get_wrapped_container().start()
        wait_for(self._answers, "the Postgres container after its start")

    def restart(self) -> None:
        self.container.get_wrapped_container().restart(timeout=30)
        wait_for(self._answers, "the Postgres container after its restart")

    def close(self) -> None:
        self.container.stop()


class DockerRabbitMQ:
    def __init__(self) -> None:
        from testcontainers.rabbitmq import RabbitMqContainer

        self.port = free_port()
        self.container: Any = RabbitMqContainer("rabbitmq:3.13").with_bind_ports(5672, self.port)
        self.container.start()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        wait_for(lambda: port_open(self.port), "the RabbitMQ container")

    def _ctl(self, *args: str) -> str:
        code, output = self.container.exec(["rabbitmqctl", "-q", *args])
        if code != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed in the container: {output!r}")
        return output.decode() if isinstance(output, bytes) else str(output)

    def rabbitmqctl(self, *args: str) -> None:
        self._ctl(*args)

    def stop_app(self) -> None:
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        self._ctl("await_startup", "--timeout", "60")

    def close(self) -> None:
        self.container.stop()
