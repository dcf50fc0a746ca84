"""The HTTP API served for a test: uvicorn in a thread on a free port of 127.0.0.1, called over real
HTTP; stopped (and its thread joined) on exit."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from miniflow.ops.api.listen import listen_socket
from miniflow.ops.polling import poll_until


class ApiServer:
    def __init__(self, app: Any) -> None:
        self.sock = listen_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        poll_until(lambda: self.server.started or None, timeout=30, what="the API to listen")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)
