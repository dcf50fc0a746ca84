"""A second "host" on this machine: a network namespace joined to ours by a veth pair.

A process started with ``prefix`` runs inside the namespace and reaches RabbitMQ only over the
veth link, so ``cut()`` (the host end of the link down) partitions it from the broker exactly as a
pulled cable would: its TCP connections stall, heartbeats stop, the broker closes its side.

RabbitMQ here listens on 127.0.0.1 only (and its guest user may only log in from loopback), so a
small TCP forwarder on the host end of the link passes the namespace's AMQP connections on to it.
The forwarder is on the host side of the cut: it relays bytes and nothing else (AMQP heartbeats
are end to end, so the broker still notices a silent client).

Needs root and iproute2 (`ip`); ``available()`` says why not when they are missing.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit


def available() -> str | None:
    """None when network namespaces can be made here, else the reason they cannot."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mfprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:  # root without CAP_NET_ADMIN (a container), or no netns support
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class Forwarder:
    """Accepts TCP connections on (host, any port) and relays each to ``target``."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="netns-forwarder").start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                if self._closed:
                    downstream.close()
                    upstream.close()
                    return
                self._sockets |= {downstream, upstream}
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):  # one side gone: the connection is over for both
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            self._sockets -= {source, sink}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self.listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class Node:
    """A network namespace with a veth link to the host and a forwarder to the local broker."""

    def __init__(self, broker_url: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"mfns{tag}"
        self.host_if, self.node_if = f"mfh{tag}", f"mfn{tag}"
        octet = random.randint(1, 254)
        self.host_ip, self.node_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
        parts = urlsplit(broker_url)
        self._broker_url = parts
        self.forwarder: Forwarder | None = None
        made = False
        try:
            _ip("netns", "add", self.name)
            made = True
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
            _ip("link", "set", self.node_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.node_ip}/30", "dev", self.node_if)
            _ip("-n", self.name, "link", "set", self.node_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            self.forwarder = Forwarder(self.host_ip, (parts.hostname or "127.0.0.1", parts.port or 5672))
        except Exception:
            if made:
                self.remove()
            raise

    @property
    def prefix(self) -> list[str]:
        """Put in front of a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def broker_url(self, **query: str) -> str:
        """The broker's URL as seen from inside the namespace (through the forwarder)."""
        assert self.forwarder is not None
        parts = self._broker_url
        netloc = parts.netloc.rsplit("@", 1)
        host = f"{self.host_ip}:{self.forwarder.port}"
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        q = "&".join(p for p in (parts.query, extra) if p)
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host, query=q))

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        """Tear everything down (safe to call twice); deleting the namespace deletes its veth end."""
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        for args in (("link", "del", self.host_if), ("netns", "del", self.name)):
            subprocess.run(["ip", *args], capture_output=True, timeout=30)
