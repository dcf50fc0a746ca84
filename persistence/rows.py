"""Rows as typed objects: what the repository hands the layers above, and what they hand it to insert.

Timestamps are always aware UTC datetimes (SQLite's naive ones are converted on the way out), and
statuses are the enums of ``protocol.states``. Rows are frozen: a change goes through a repository
update, never through a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from miniflow.protocol.clock import as_utc
from miniflow.protocol.states import RunStatus, StepStatus

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RunRow:
    id: str
    workflow: str
    version: int
    status: RunStatus
    params: dict[str, Any]
    idempotency_key: str
    priority: int
    created_at: datetime
    error: str | None = None
    trace_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    open_ends: int | None = None  # ends (steps nothing needs) not yet succeeded (None: to be counted)
    concurrency_key: str | None = None  # the value of its workflow's concurrency key, if it has one

    @property
    def duration_ms(self) -> float | None:
        return duration_ms(self.started_at, self.finished_at)


@dataclass(frozen=True, slots=True)
class StepRow:
    run_id: str
    step: str
    status: StepStatus
    attempt: int = 0
    first_attempt: int = 1  # the first attempt of the current retry budget (a run retry starts a new one)
    output: Any = None
    error: str | None = None
    node: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_due_at: datetime | None = None  # a queued attempt of a step with a timeout: when its result is overdue
    running_attempt: int | None = None  # the attempt an executor reported running
    note: str | None = None  # why a queued step waits
    waiting: int | None = None  # needs not yet succeeded, for a step with several (None: to be counted)
    cache_key: str | None = None  # a dispatched step of a cached task: the digest its output is stored under
    item: Any = None  # an instance of a map step: its element
    map_size: int | None = None  # a map step: its number of elements,
    map_next: int | None = None  # the index of the next to dispatch,
    map_open: int | None = None  # and how many have not ended
    pool: str | None = None  # a step of a pool with slots: the pool it holds a slot of, or waits for
    slot_wait_since: datetime | None = None  # waiting for a slot since

    @property
    def running(self) -> bool:
        """Queued, and its current attempt reported running by an executor."""
        return self.status == StepStatus.QUEUED and self.running_attempt == self.attempt

    @property
    def duration_ms(self) -> float | None:
        return duration_ms(self.started_at, self.finished_at)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    run_id: str
    step: str
    attempt: int
    ok: bool
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    recorded_at: datetime
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    node: str | None = None
    traceback: str | None = None
    id: int | None = None  # set once stored


@dataclass(frozen=True, slots=True)
class DefinitionRow:
    name: str
    version: int
    created_at: datetime
    source: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    message_id: str
    queue_name: str
    body: bytes
    created_at: datetime
    delay_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    queue: str
    code: str
    detail: str
    raw: bytes
    created_at: datetime
    message_id: str | None = None
    actor: str | None = None
    node: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    id: str
    name: str
    workflow: str
    cron: str
    timezone: str
    params: dict[str, Any]
    catch_up: str
    overlap: str
    created_at: datetime
    updated_at: datetime
    version: int | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    jitter_s: float = 0.0
    catch_up_limit: int = 1
    catch_up_grace_s: float = 60.0
    priority: int = 0
    paused: bool = False
    next_due_at: datetime | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class TickRow:
    schedule_id: str
    due_at: datetime
    kind: str  # cron | manual
    outcome: str
    fired_at: datetime  # when the outcome was recorded
    lateness_ms: float  # fired_at - due_at
    idempotency_key: str | None = None
    detail: str | None = None
    node: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    kid: str
    public: str  # base64url of the Ed25519 public key
    private: str = field(repr=False)  # sealed with the data key
    state: str  # current | next | accepted | retired
    created_at: datetime
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    kid: str
    name: str
    role: str
    token_hash: str = field(repr=False)
    mac_key: str = field(repr=False)  # sealed with the data key
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    scope: str | None = None  # workflow name patterns, comma separated; None: every workflow


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: datetime
    action: str
    resource: str
    outcome: str  # ok, denied, failed
    status: int  # the HTTP status of the answer
    key_id: str | None = None
    key_name: str | None = None
    role: str | None = None
    client: str | None = None
    detail: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A process of the workers registry (table workers); its state is computed when read."""
    node: str
    kind: str  # worker, timer, api
    roles: str  # comma separated
    queues: list[str]
    threads: int
    pid: int
    version: str
    namespace: str
    started_at: datetime
    last_seen: datetime
    interval_s: float
    beat: int
    busy: int
    running: list[dict[str, Any]]
    stopped_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A web UI session (table ui_sessions); the cookie's token is never stored, only its SHA-256."""
    id: str
    token_hash: str = field(repr=False)
    key_id: str
    key_name: str
    role: str
    scope: str | None
    sealed_mac: bytes = field(repr=False)  # the key's MAC key, sealed under a key derived from the cookie's token
    csrf: str = field(repr=False)
    client: str
    user_agent: str
    created_at: datetime
    last_seen: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def from_mapping(cls: type[R], mapping: Mapping[Any, Any]) -> R:
    """A row of ``cls`` from a result mapping (extra columns ignored, datetimes made aware UTC)."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple((f.name, "datetime" in str(f.type)) for f in fields(cls))  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name, is_time in names:
        if name in mapping:
            value = mapping[name]
            values[name] = as_utc(value) if is_time else value
    if cls is RunRow:
        values["status"] = RunStatus(values["status"])
    elif cls is StepRow:
        values["status"] = StepStatus(values["status"])
    return cls(**values)


def values_of(row: Any) -> dict[str, Any]:
    """A row's fields as column values for an insert (an unset ``id`` left out)."""
    out = {f.name: getattr(row, f.name) for f in fields(row)}
    if out.get("id", 0) is None:
        del out["id"]
    return out


def duration_ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 1)


@dataclass(frozen=True, slots=True)
class CacheRow:
    """An entry of the result cache."""

    digest: str
    task: str
    workflow: str
    step: str
    run_id: str
    output: Any
    size: int
    created_at: datetime
    expires_at: datetime
    hits: int = 0
    last_hit_at: datetime | None = None
