"""Disposable RabbitMQ and Postgres, so that stopping, restarting or cutting off a service never
touches the machine's own: the fault tests use them, and so does `miniflow test --against
--private-services` for the broker_restart and database_restart faults.

With a Docker daemon reachable they are containers (testcontainers, official images, host ports
chosen here and bound fixed so that a restart keeps them). Otherwise they are private instances of
the installed server binaries: a Postgres cluster made by ``initdb`` in a temporary directory on a
free port, and a RabbitMQ node with its own node name, ports, data directory, config, plugins file
and Erlang cookie. Private processes are children of the test process that die with it (Linux
PDEATHSIG), and every fixture tears them down in ``finally``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import psycopg2

START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout).close()
        return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:g}s")
        time.sleep(0.1)


def die_with_parent(user: str | None = None) -> Callable[[], None]:
    """A preexec_fn: become ``user`` (when given), then ask the kernel for SIGTERM when we die."""
    def setup() -> None:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, after setuid

    return setup


class _Spawner:
    """Starts the private server processes from one long-lived thread: the kernel sends PDEATHSIG
    when the *thread* that forked a child ends, so a postmaster restarted from a short-lived fault
    thread would otherwise be told to stop as soon as that thread returns."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        threading.Thread(target=self._run, name="private-services-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                done.set_exception(exc)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        done: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((lambda: subprocess.Popen(*args, **kwargs), done))
        return done.result(timeout=60)


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.popen(*args, **kwargs)


class Broker(Protocol):
    url: str

    def rabbitmqctl(self, *args: str) -> None: ...
    def stop_app(self) -> None: ...
    def start_app(self) -> None: ...
    def close(self) -> None: ...


class Database(Protocol):
    def url(self, database: str = "postgres") -> str: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def close(self) -> None: ...


# -- from the installed binaries ------------------------------------------------------------------
class PrivatePostgres:
    """A Postgres cluster of our own: initdb in a temporary directory, the postmaster on a free port."""

    def __init__(self, tls: Any = None) -> None:
        """``tls``: server files (tests/integration/tls.py): the cluster then takes TLS connections."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
        if not found[-1]:
            raise RuntimeError("no Postgres server binaries (initdb) are installed")
        self.bindir = Path(found[-1]).parent
        self.user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
        self.dir = Path(tempfile.mkdtemp(prefix="miniflow-pg-"))
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([str(self.bindir / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120,
                       preexec_fn=die_with_parent(self.user))
        self.options: list[str] = []
        if tls is not None:  # the server reads its key as the postgres user, and only if nobody else can
            for name, source in (("server.pem", tls.cert), ("server.key", tls.key)):
                target = self.dir / name
                shutil.copyfile(source, target)
                target.chmod(0o600)
                if self.user is not None:
                    shutil.chown(target, self.user)
            # 127.0.0.2 as well: the same server under a name its certificate does not have
            self.options = ["-c", "listen_addresses=127.0.0.1,127.0.0.2", "-c", "ssl=on",
                            "-c", f"ssl_cert_file={self.dir / 'server.pem'}",
                            "-c", f"ssl_key_file={self.dir / 'server.key'}"]
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = _popen(
                [str(self.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port), "-k", str(self.dir),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200", *self.options],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(self.user))
        wait_for(self._answers, f"the private Postgres on port {self.port}")

    def _answers(self) -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: connections are cut, the data is kept
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRabbitMQ:
    """A RabbitMQ node of our own: its node name, AMQP and distribution ports, data and log
    directories, config, plugins file and Erlang cookie (HOME) are all private."""

    def __init__(self, tls: Any = None, management: bool = False) -> None:
        """``tls``: server files (tests/integration/tls.py) for a TLS listener on ``tls_port``;
        ``management``: the management plugin on ``management_port`` (statistics every 500 ms)."""
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # not the /usr/sbin wrapper: it changes user and env
        if not os.path.exists(server):
            server = shutil.which("rabbitmq-server") or ""
        if not server:
            raise RuntimeError("no RabbitMQ server is installed")
        self.bindir = Path(server).parent
        self.dir = Path(tempfile.mkdtemp(prefix="miniflow-rmq-"))
        self.port = free_port()
        self.node = f"mft{uuid.uuid4().hex[:8]}@localhost"
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n" if management else "[].\n")
        conf = "loopback_users = none\n"
        self.management_port = free_port() if management else None
        if management:
            conf += (f"management.tcp.port = {self.management_port}\nmanagement.tcp.ip = 127.0.0.1\n"
                     "collect_statistics_interval = 500\n")
        self.tls_port = free_port() if tls is not None else None
        if tls is not None:
            conf += (f"listeners.ssl.default = {self.tls_port}\nssl_options.cacertfile = {tls.ca}\n"
                     f"ssl_options.certfile = {tls.cert}\nssl_options.keyfile = {tls.key}\n"
                     "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n")
        (self.dir / "rabbitmq.conf").write_text(conf)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"), "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
            "RUNNING_UNDER_SYSTEMD": "1",  # the script execs the VM in the foreground (our child), with -noinput
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        with (self.dir / "server.log").open("ab") as log:
            self.proc = _popen([server], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, f"the private RabbitMQ node {self.node}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the private RabbitMQ node exited: {(self.dir / 'server.log').read_text()[-2000:]}")
        self.ctl("await_startup", "--timeout", "60")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl against this node only (-n), with its own cookie."""
        return subprocess.run([str(self.bindir / "rabbitmqctl"), "-n", self.node, "-q", *args], env=self.env,
                              check=check, capture_output=True, text=True, timeout=120)

    def rabbitmqctl(self, *args: str) -> None:
        self.ctl(*args)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        deadline = time.monotonic() + 60
        while self.ctl("start_app", check=False).returncode != 0:  # the listener may still be closing
            if time.monotonic() > deadline:
                raise RuntimeError(f"the private RabbitMQ node {self.node} did not start its app again")
            time.sleep(0.5)
        self.ctl("await_startup", "--timeout", "60")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # the VM shuts the node down cleanly
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def start_broker() -> Broker:
    from .containers import DockerRabbitMQ, docker_reachable

    return DockerRabbitMQ() if docker_reachable() else PrivateRabbitMQ()


def start_database() -> Database:
    from .containers import DockerPostgres, docker_reachable

    return DockerPostgres() if docker_reachable() else PrivatePostgres()


def create_database(server: Database, name: str) -> str:
    """A new database on a private server; returns its URL."""
    admin = psycopg2.connect(server.url().replace("postgresql+psycopg2", "postgresql"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return server.url(name)
