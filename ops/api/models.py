"""The request and response bodies of the HTTP API; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ErrorInfo(BaseModel):
    code: str = Field(description="A stable code: a protocol rejection code, or unauthenticated, forbidden, "
                                  "not_found, conflict, invalid_request, too_many_failures, unavailable, internal")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    database: str
    broker: str


class WhoAmI(BaseModel):
    kid: str
    name: str
    role: str
    scope: list[str]


class StepView(BaseModel):
    step: str
    status: str
    attempts: int
    current_attempt: int
    duration_ms: float | None
    queue_wait_ms: float | None = Field(None, description="From queued to started, of the current attempt")
    node: str | None
    error: str | None
    note: str | None = Field(None, description="Why a queued step waits")
    output: Any = None


class AttemptView(BaseModel):
    step: str
    attempt: int
    ok: bool
    node: str | None
    duration_ms: float
    error_type: str | None
    error: str | None
    traceback: str | None
    output: Any = None
    started_at: str | None
    finished_at: str | None


class RunSummary(BaseModel):
    id: str
    workflow: str
    version: int
    status: str
    idempotency_key: str
    params: dict[str, Any]
    priority: int
    error: str | None
    trace_id: str | None
    created_at: str | None
    finished_at: str | None
    duration_ms: float | None


class RunDetail(RunSummary):
    steps: list[StepView]
    attempts: list[AttemptView]
    trace_url: str | None = None


class RunPage(BaseModel):
    items: list[RunSummary]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null on the last")


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(pattern=NAME)
    params: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(None, ge=1, le=2_147_483_647)
    priority: int = Field(0, ge=0, le=9)


class Started(BaseModel):
    run_id: str | None = Field(description="Null when no coordinator created the run within the wait")
    idempotency_key: str
    message_id: str | None = Field(description="Null when the key already had a run (nothing was published)")
    existing: bool = Field(description="True when the idempotency key already had this run")
    status: str | None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class RunAction(BaseModel):
    run_id: str
    action: Literal["cancel", "retry"]
    published: bool = Field(description="False when nothing needed doing (the run had ended)")
    message_id: str | None
    status: str
    handled: bool | None = Field(None, description="retry: the coordinator acted on it within ?wait= seconds")


class Event(BaseModel):
    """One server-sent event of GET /runs/{id}/events (the `data:` line, JSON)."""
    kind: Literal["run", "step", "end"]
    run_id: str
    status: str
    step: str | None = None
    attempt: int | None = None
    error: str | None = None


class GraphNode(BaseModel):
    id: str
    task: str
    queue: str | None
    retries: int
    timeout: float | None


class GraphEdge(BaseModel):
    source: str = Field(serialization_alias="from")
    target: str = Field(serialization_alias="to")


class Graph(BaseModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class ParamView(BaseModel):
    name: str
    required: bool
    secret: bool
    default: Any = None
    description: str


class WorkflowSummary(BaseModel):
    name: str
    latest_version: int
    versions: list[int]


class WorkflowVersion(BaseModel):
    name: str
    version: int
    versions: list[int]
    description: str
    source: str | None
    created_at: str | None
    params: list[ParamView]
    yaml: str
    graph: Graph


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    yaml: str = Field(min_length=1, max_length=262_144, description="The workflow definition, as a file holds it")
    version: int | None = Field(None, ge=1, le=2_147_483_647)


class Deployed(BaseModel):
    name: str
    version: int
    created: bool


class CatchUp(BaseModel):
    policy: Literal["skip", "latest", "all"] = "skip"
    limit: int = Field(1, ge=1, le=1000)
    grace: float = Field(60.0, ge=0, le=86_400 * 7)


class Tick(BaseModel):
    due_at: str | None
    kind: str
    outcome: str
    idempotency_key: str | None
    run_id: str | None
    fired_at: str | None
    lateness_ms: float | None
    detail: str | None
    node: str | None


class Schedule(BaseModel):
    id: str
    name: str
    workflow: str
    version: int | None
    cron: str
    timezone: str
    params: dict[str, Any]
    start: str | None
    end: str | None
    jitter: float
    catch_up: CatchUp
    overlap: str
    priority: int
    paused: bool
    next_due_at: str | None
    next_fires: list[str | None] | None = None
    ticks: list[Tick] | None = None


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    workflow: str = Field(pattern=NAME)
    cron: str = Field(min_length=1, max_length=120)
    timezone: str = Field("UTC", min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(None, ge=1, le=2_147_483_647)
    start: str | None = Field(None, max_length=40)
    end: str | None = Field(None, max_length=40)
    jitter: float = Field(0.0, ge=0, le=86_400)
    catch_up: CatchUp = Field(default_factory=lambda: CatchUp.model_validate({}))
    overlap: Literal["allow", "skip", "buffer_one", "cancel_running"] = "allow"
    priority: int = Field(0, ge=0, le=9)
    paused: bool = False
    replace: bool = False


class ScheduleChanged(BaseModel):
    schedule: str
    state: Literal["active", "paused", "deleted", "triggered"]
    next_due_at: str | None = None
    idempotency_key: str | None = None


class DeadLetter(BaseModel):
    id: int
    queue: str
    message_id: str | None
    actor: str | None
    code: str
    detail: str
    raw_bytes: int
    node: str | None
    created_at: str


class DeadLetterDetail(DeadLetter):
    raw_hex: str | None = Field(description="The first 4 KiB of the rejected bytes, as hex (admin keys only)")


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None


class KeyView(BaseModel):
    kid: str
    name: str
    role: str
    scope: list[str]
    created_at: str | None
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "producer", "operator", "admin", "executor"]
    expires: str | None = Field(None, pattern=r"^\d{1,5}[dhm]$", description="Lifetime such as 90d, 12h, 30m")
    scope: str | None = Field(None, max_length=200, description="Workflow name patterns, comma separated")


class KeyCreated(KeyView):
    token: str = Field(description="Shown this once; only its hash is stored")


class AuditView(BaseModel):
    id: int
    at: str | None
    key_id: str | None
    key_name: str | None
    role: str | None
    action: str
    resource: str
    outcome: str
    status: int
    client: str | None
    detail: str | None


class AuditPage(BaseModel):
    items: list[AuditView]
    next_cursor: str | None
