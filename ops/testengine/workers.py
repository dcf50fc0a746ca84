"""The workers `miniflow test --against` starts: a namespace and a database of their own on the
configured services (or on private ones, :class:`PrivateServices`), keys provisioned as an operator
would, a coordinator process and an executor process that is restarted whenever a fault kills it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from miniflow.persistence.sealing import new_key_line
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.names import QueueNames

from ..processes import BIN, WorkerProcess
from .against import Target, require_services
from .services import Broker, Database, die_with_parent, start_broker, start_database

# The settings a started namespace sets itself (the rest, such as TLS options, pass through).
OWN_SETTINGS = {"MINIFLOW_NAMESPACE", "MINIFLOW_DATABASE_URL", "MINIFLOW_KEY", "MINIFLOW_KEY_FILE",
                "MINIFLOW_CORE_PUBLIC_KEYS", "MINIFLOW_DATA_KEY", "MINIFLOW_DATA_KEY_FILE", "MINIFLOW_METRICS_PORT",
                "MINIFLOW_API_URL"}


class PrivateServices:
    """A RabbitMQ node and a Postgres cluster of the engine's own (containers when a Docker daemon is
    reachable, else the installed server binaries), so that restart faults touch nothing shared."""

    def __init__(self) -> None:
        self.broker: Broker | None = None
        self.database: Database | None = None
        try:
            self.broker = start_broker()
            self.database = start_database()
        except Exception as exc:  # noqa: BLE001 - whatever stops them, say so (and stop what did start)
            self.close()
            raise ConfigError(f"--private-services could not start a RabbitMQ and a Postgres: {exc}") from None

    def environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` pointed at these services."""
        assert self.broker is not None and self.database is not None
        return dict(environ, MINIFLOW_BROKER_URL=self.broker.url, MINIFLOW_DATABASE_URL=self.database.url())

    def close(self) -> None:
        for service in (self.database, self.broker):
            if service is not None:
                service.close()


class StartedWorkers:
    """A namespace and a database of the engine's own, with a coordinator and an executor process.
    The executor is restarted when it dies (a scenario's fault or poison step kills it)."""

    def __init__(self, environ: Mapping[str, str], workdir: Path, *, steps: list[str], pools: list[str],
                 threads: int = 8, services: PrivateServices | None = None) -> None:
        self.services = services
        environ = services.environ(environ) if services is not None else environ
        require_services(environ)
        self.workdir, self.steps, self.pools, self.threads = workdir, steps, pools, threads
        suffix = uuid.uuid4().hex[:8]
        self.namespace, self.dbname = f"mfscn_{suffix}", f"miniflow_scenarios_{suffix}"
        admin = make_url(environ["MINIFLOW_DATABASE_URL"])
        self.admin_url = admin.render_as_string(hide_password=False)
        self.database_url = admin.set(database=self.dbname).render_as_string(hide_password=False)
        base = {k: v for k, v in environ.items() if k not in OWN_SETTINGS}
        pythonpath = os.pathsep.join(p for p in (os.getcwd(), environ.get("PYTHONPATH", "")) if p)
        self.env = dict(base, MINIFLOW_NAMESPACE=self.namespace, MINIFLOW_DATABASE_URL=self.database_url,
                        MINIFLOW_DATA_KEY=new_key_line("scenarios"), PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
        self.executor_env: dict[str, str] = {}
        self.coordinator: WorkerProcess | None = None
        self.executor: WorkerProcess | None = None
        self.target: Target | None = None
        self._closing = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="scenario-executor-watch")
        self._created = False

    def start(self) -> Target:
        try:
            self._database("CREATE DATABASE")
            self._created = True
            self._provision()
            self.coordinator = WorkerProcess(self.env, ["--role", "coordinator", "--role", "results", "--threads",
                                                        "8"], self.workdir / "coordinator.log", cwd=os.getcwd(),
                                             preexec=die_with_parent())
            self.executor = self._executor()
            self.coordinator.wait_ready()
            self.executor.wait_ready()
        except BaseException:
            self.close()
            raise
        self.target = Target(self.env, self.database_url, "against", managed=True, services=self.services)
        self._supervisor.start()
        return self.target

    def _database(self, verb: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                suffix = " WITH (FORCE)" if verb.startswith("DROP") else ""
                conn.execute(text(f'{verb} "{self.dbname}"{suffix}'))
        except Exception as exc:  # noqa: BLE001 - say what it needs, without the URL (it may hold a password)
            raise ConfigError(f"--against could not {verb.lower()} {self.dbname} on the configured Postgres "
                              f"(the user needs CREATEDB): {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        finally:
            engine.dispose()

    def _miniflow(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "miniflow"), *args], env=self.env, capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise ConfigError(f"`miniflow {' '.join(args)}` failed for the scenario namespace: {done.stderr[-2000:]}")
        return done.stdout

    def _provision(self) -> None:
        """Schema, a core signing key, and keys for the executor and the engine (an operator)."""
        self._miniflow("db", "upgrade")
        public = json.loads(self._miniflow("keys", "core", "init", "--json"))["core_public_keys"]
        tokens = {role: json.loads(self._miniflow("keys", "create", "--name", f"scenarios-{role}", "--role", role,
                                                  "--json"))["token"] for role in ("executor", "operator")}
        self.env.update(MINIFLOW_KEY=tokens["operator"], MINIFLOW_CORE_PUBLIC_KEYS=public)
        self.executor_env = dict(self.env, MINIFLOW_KEY=tokens["executor"])

    def _executor(self) -> WorkerProcess:
        args = ["--role", "executor", "--threads", str(self.threads), "--report-running-after", "0.05"]
        for module in ["miniflow.ops.testengine.remote", *self.steps]:
            args += ["--steps", module]
        for pool in self.pools:
            args += ["--queue", pool]
        log = self.workdir / f"executor-{len(self.target.restarts) if self.target else 0}.log"
        # die_with_parent: with the thread that started it, which lives until close()
        return WorkerProcess(self.executor_env, args, log, cwd=os.getcwd(), preexec=die_with_parent())

    def _supervise(self) -> None:
        while not self._closing.wait(0.05):
            current = self.executor
            if current is None or current.proc.poll() is None:
                continue
            assert self.target is not None
            code = current.proc.returncode
            self.target.restarts.append(f"executor exited ({'killed' if code == -9 else f'code {code}'}): restarted")
            self.executor = self._executor()
            try:
                self.executor.wait_ready()
            except AssertionError as exc:  # tried again on the next pass; the cases waiting on it time out
                self.target.restarts.append(f"executor did not restart: {str(exc)[:300]}")

    def close(self) -> None:
        self._closing.set()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=90)
        if self.executor is not None:
            self.executor.kill()  # the engine's own: a step it still runs (a cancelled one) is not waited for
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.target is not None:
            self.target.close()
        try:
            from miniflow.actors.broker import delete_topology

            delete_topology(self.env["MINIFLOW_BROKER_URL"], QueueNames(self.namespace), self.pools)
        finally:
            if self._created:
                self._database("DROP DATABASE IF EXISTS")
