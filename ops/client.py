"""``miniflow.Client``: start, wait for, cancel and retry runs from Python code.

Two ways to reach MiniFlow, chosen by what the client is given:

- the broker (``broker_url``, and a ``database_url`` to read runs): starts, cancels and retries are
  published like any producer's (signed with ``key``, a client key, when given); waits read Postgres;
- the HTTP API (``api_url`` and ``api_key``): everything goes through `miniflow api`, and a wait
  follows the run's events stream.

::

    from miniflow import Client

    client = Client(broker_url="amqp://guest:guest@127.0.0.1:5672/%2F",
                    database_url="postgresql+psycopg2://miniflow@127.0.0.1/miniflow")
    handle = client.start("csv-report", {"region": "EU"})
    result = handle.wait(timeout=60)
    print(result.status, result.outputs["summarise"])

    api = Client(api_url="http://127.0.0.1:8080", api_key=os.environ["MINIFLOW_KEY"])
    result = api.start("csv-report", {"region": "EU"}, key="report-2026-12-02").wait(60)

Every failure is a MiniFlow error: ConfigError (missing settings), BrokerUnavailable and
DatabaseUnavailable, ApiError (an API answer other than success, with its status and code),
WaitTimedOut.
"""

# size: one public class over two transports (broker + database, or the HTTP API), kept together so
# both stay the same surface; the HTTP details are the smaller half.

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from miniflow.protocol.auth import ClientKey
from miniflow.protocol.errors import ApiError, ConfigError, WaitTimedOut
from miniflow.protocol.names import DEFAULT_NAMESPACE
from miniflow.protocol.states import RETRYABLE, RUN_TERMINAL

POLL_S = 0.2  # how often a wait reads the database


@dataclass(frozen=True)
class StepResult:
    """One step of a run as it stands."""

    step: str
    status: str
    attempts: int
    output: Any = None
    error: str | None = None
    node: str | None = None
    duration_ms: float | None = None


@dataclass(frozen=True)
class RunResult:
    """A run as it stands (secret params and outputs masked, as everywhere)."""

    run_id: str
    workflow: str
    version: int
    status: str
    error: str | None
    steps: list[StepResult]
    params: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    duration_ms: float | None = None

    @property
    def ended(self) -> bool:
        return self.status in RUN_TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def outputs(self) -> dict[str, Any]:
        """The output of each step that has one, by step name."""
        return {s.step: s.output for s in self.steps if s.output is not None}

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> RunResult:
        """From the run as `miniflow runs show --json` and GET /runs/{id} give it."""
        return cls(run_id=detail["id"], workflow=detail["workflow"], version=detail["version"],
                   status=detail["status"], error=detail.get("error"), params=dict(detail.get("params") or {}),
                   trace_id=detail.get("trace_id"), duration_ms=detail.get("duration_ms"),
                   steps=[StepResult(step=s["step"], status=s["status"], attempts=s["attempts"],
                                     output=s.get("output"), error=s.get("error"), node=s.get("node"),
                                     duration_ms=s.get("duration_ms")) for s in detail.get("steps") or []])


class RunHandle:
    """A run started (or found) through a Client: its idempotency key, and its id once known."""

    def __init__(self, client: Client, idempotency_key: str, run_id: str | None = None,
                 message_id: str | None = None) -> None:
        self.client, self.idempotency_key, self.message_id = client, idempotency_key, message_id
        self._run_id = run_id

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self._run_id!r}, idempotency_key={self.idempotency_key!r})"

    @property
    def run_id(self) -> str | None:
        """The run's id, looked up by the idempotency key until a coordinator has created it."""
        if self._run_id is None:
            self._run_id = self.client._run_id_for_key(self.idempotency_key)
        return self._run_id

    def result(self) -> RunResult | None:
        """The run now (None while no coordinator has created it)."""
        run_id = self.run_id
        return self.client.get(run_id) if run_id else None

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run ends; WaitTimedOut past ``timeout`` seconds (None: no limit)."""
        return self.client._wait(self, timeout)

    def cancel(self, reason: str = "") -> bool:
        """Ask for the run to be cancelled; False when it had ended already."""
        return self.client.cancel(self._need_id(), reason)

    def retry(self) -> RunHandle:
        """Re-run it (failed or cancelled) from its unfinished steps; this handle, for waiting again."""
        self.client.retry(self._need_id())
        return self

    def _need_id(self) -> str:
        run_id = self.run_id
        if run_id is None:
            raise ConfigError(f"the run of idempotency key {self.idempotency_key!r} does not exist yet")
        return run_id


class Client:
    """Reaches MiniFlow through the broker and the database, or through the HTTP API."""

    def __init__(self, broker_url: str | None = None, namespace: str = DEFAULT_NAMESPACE, *,
                 database_url: str | None = None, api_url: str | None = None, api_key: str | None = None,
                 key: str | ClientKey | None = None, timeout: float = 30.0) -> None:
        if api_url is None and broker_url is None:
            raise ConfigError("a Client needs broker_url (with database_url to read runs) or api_url and api_key")
        if api_url is not None and not api_key:
            raise ConfigError("a Client with api_url needs api_key (a key from `miniflow keys create`)")
        self.namespace, self.timeout = namespace, timeout
        self.broker_url, self.database_url, self.api_url = broker_url, database_url, api_url
        self._key = ClientKey.from_token(key, where="key") if isinstance(key, str) else key
        self._api_key = api_key
        self._http: Any = None
        self._db: Any = None
        self._publisher: Any = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Client:
        """From MINIFLOW_API_URL (then MINIFLOW_KEY is the API key), or MINIFLOW_BROKER_URL,
        MINIFLOW_DATABASE_URL, MINIFLOW_NAMESPACE and MINIFLOW_KEY."""
        env = os.environ if environ is None else environ
        key = env.get("MINIFLOW_KEY") or None
        if not key and env.get("MINIFLOW_KEY_FILE"):
            with open(env["MINIFLOW_KEY_FILE"], encoding="utf-8") as f:
                key = f.read().strip()
        namespace = env.get("MINIFLOW_NAMESPACE") or DEFAULT_NAMESPACE
        if env.get("MINIFLOW_API_URL"):
            return cls(api_url=env["MINIFLOW_API_URL"], api_key=key, namespace=namespace)
        return cls(env.get("MINIFLOW_BROKER_URL"), namespace, database_url=env.get("MINIFLOW_DATABASE_URL"), key=key)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._publisher is not None:
            self._publisher.close()
        if self._db is not None:
            self._db.dispose()
        self._http = self._publisher = self._db = None

    # -- what users call ----------------------------------------------------------------------------
    def start(self, workflow: str, params: Mapping[str, Any] | None = None, *, version: int | None = None,
              key: str | None = None, priority: int | None = None) -> RunHandle:
        """Start ``workflow``; ``key`` is the idempotency key (the same key starts one run)."""
        key = key or str(uuid.uuid4())
        if self.api_url is not None:
            body = {"workflow": workflow, "params": dict(params or {}), "version": version,
                    "priority": priority or 0}
            answer = self._call("POST", "/runs", json=body, headers={"Idempotency-Key": key})
            return RunHandle(self, key, answer.get("run_id"), answer.get("message_id"))
        message_id = self._publish().start_workflow(workflow, params=dict(params or {}), version=version,
                                                    idempotency_key=key, priority=priority or 0)
        return RunHandle(self, key, None, message_id)

    def run(self, run_id: str) -> RunHandle:
        """A handle on an existing run."""
        result = self.get(run_id)
        return RunHandle(self, "", result.run_id)

    def get(self, run_id: str) -> RunResult:
        """A run as it stands; ApiError (404) or ConfigError when there is no such run."""
        if self.api_url is not None:
            return RunResult.from_detail(self._call("GET", f"/runs/{run_id}"))
        from miniflow.persistence import repository as repo

        from .views import run_to_dict, secret_params
        with self._database().connect() as conn:
            run = repo.find_run(conn, run_id)
            if run is None:
                raise ConfigError(f"no run {run_id!r}")
            detail = run_to_dict(run, list(repo.get_steps(conn, run.id).values()), [],
                                 secret_params(conn, run.workflow, run.version))
        return RunResult.from_detail(detail)

    def cancel(self, run_id: str, reason: str = "") -> bool:
        """Ask for a run to be cancelled; False when it had ended already (nothing is sent)."""
        if self.api_url is not None:
            return bool(self._call("POST", f"/runs/{run_id}/cancel", json={"reason": reason})["published"])
        if self.get(run_id).ended:
            return False
        self._publish().cancel_run(run_id, reason)
        return True

    def retry(self, run_id: str) -> str:
        """Re-run a failed or cancelled run; returns the message id of the request."""
        if self.api_url is not None:  # the API answers once the coordinator has acted on it
            answer = self._call("POST", f"/runs/{run_id}/retry", params={"wait": min(self.timeout, 30.0)})
            if not answer.get("handled"):
                raise WaitTimedOut(f"run {run_id} to be retried (is a coordinator running?)", self.timeout)
            return str(answer["message_id"])
        status = self.get(run_id).status
        if status not in RETRYABLE:
            raise ConfigError(f"run {run_id} is {status}: only failed or cancelled runs are retried")
        message_id: str = self._publish().retry_run(run_id)
        # the coordinator records the id of each retry it acts on, in the transaction that re-opens the run
        from miniflow.persistence import repository as repo
        deadline = time.monotonic() + self.timeout
        while True:
            with self._database().connect() as conn:
                if repo.request_handled(conn, message_id):
                    return message_id
            if time.monotonic() >= deadline:
                raise WaitTimedOut(f"run {run_id} to be retried (is a coordinator running?)", self.timeout)
            time.sleep(POLL_S / 4)

    # -- underneath ---------------------------------------------------------------------------------
    def _wait(self, handle: RunHandle, timeout: float | None) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.api_url is not None and handle.run_id is not None:
            return self._follow(handle.run_id, deadline, timeout)
        if self.api_url is None and self.database_url is None:
            raise ConfigError("waiting for a run needs database_url (or api_url and api_key)")
        while True:
            result = handle.result()
            if result is not None and result.ended:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(f"run {handle.run_id or handle.idempotency_key}", timeout or 0.0,
                                   result.status if result else "not created yet")
            time.sleep(POLL_S)

    def _follow(self, run_id: str, deadline: float | None, timeout: float | None) -> RunResult:
        """Follow GET /runs/{id}/events until the event of kind end (reconnecting if cut)."""
        import httpx
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimedOut(f"run {run_id}", timeout or 0.0, self.get(run_id).status)
            try:
                with self._session().stream("GET", f"/runs/{run_id}/events",
                                            timeout=httpx.Timeout(self.timeout, read=min(left or 30.0, 30.0))) as r:
                    if r.status_code != 200:
                        r.read()
                        raise self._error(r)
                    for event in _sse(r.iter_lines()):
                        if event.get("kind") == "end":
                            return self.get(run_id)
            except httpx.ReadTimeout:
                continue  # quiet for longer than the read timeout: look at the deadline, then again
            except httpx.TransportError as exc:
                raise ApiError(0, "unreachable", f"the API at {self.api_url} did not answer: {type(exc).__name__}") \
                    from None

    def _run_id_for_key(self, key: str) -> str | None:
        if not key:
            return None
        if self.api_url is not None:
            found = self._call("GET", "/runs", params={"limit": 1, "idempotency_key": key})
            items = found.get("items") or []
            return items[0]["id"] if items else None
        from miniflow.persistence import repository as repo
        with self._database().connect() as conn:
            return repo.run_id_for_key(conn, key)

    def _database(self) -> Any:
        if self.database_url is None:
            raise ConfigError("reading runs needs database_url (or api_url and api_key)")
        if self._db is None:
            from miniflow.persistence import Database
            self._db = Database(self.database_url)
        return self._db

    def _publish(self) -> Any:
        if self.broker_url is None:
            raise ConfigError("publishing needs broker_url")
        if self._publisher is None:
            from miniflow.protocol.publisher import Publisher
            self._publisher = Publisher(self.broker_url, self.namespace, key=self._key)
        return self._publisher

    def _session(self) -> Any:
        if self._http is None:
            import httpx
            self._http = httpx.Client(base_url=str(self.api_url), timeout=self.timeout,
                                      headers={"Authorization": f"Bearer {self._api_key}",
                                               "User-Agent": "miniflow-client"})
        return self._http

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx
        try:
            answer = self._session().request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"the API at {self.api_url} did not answer: {type(exc).__name__}") \
                from None
        if answer.status_code >= 400:
            raise self._error(answer)
        data = answer.json()
        return data if isinstance(data, dict) else {"items": data}

    @staticmethod
    def _error(answer: Any) -> ApiError:
        try:
            info = answer.json()["error"]
            return ApiError(answer.status_code, str(info["code"]), str(info["message"]), info.get("details"))
        except (ValueError, KeyError, TypeError):
            return ApiError(answer.status_code, "http_error", f"HTTP {answer.status_code}")


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON data of each server-sent event (comment lines and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line.strip() and data:
            try:
                yield json.loads("\n".join(data))
            except ValueError:
                pass
            data = []


__all__ = ["Client", "RunHandle", "RunResult", "StepResult"]
