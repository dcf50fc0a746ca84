"""The tables of MiniFlow (SQLAlchemy 2, typed). Alembic migrations in persistence/migrations.

    workflow_definitions  name + version -> spec (immutable once stored)
    runs                  one row per run; idempotency_key is the durable dedupe of starts
    run_steps             the coordinator's view of each step of a run (status, current attempt)
    step_attempts         every recorded attempt, unique per (run, step, attempt)
    outbox                messages committed with a state change, waiting to be published
    dead_letters          every rejected message, with its reason code and a bounded raw copy
    handled_requests      message ids of the retry requests acted on (a redelivery is not a second retry)
    run_gates             one row per workflow with concurrency limits: its admissions happen one at a time
    step_cache            the result cache: a cached task's output by the digest of its task and key
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class WorkflowDefinition(Base):
    __tablename__ = "workflow_definitions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_workflow_definitions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    checksum: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_created_at", "created_at"), Index("ix_runs_deadline_at", "deadline_at"),
                      Index("ix_runs_workflow_status", "workflow", "status", "concurrency_key"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    trace_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # ends (steps nothing needs) not yet succeeded: an end's success brings it down by one, the run
    # succeeds at 0 (NULL: a run from before migration 0010; the coordinator counts it)
    open_ends: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the value of the workflow's concurrency key for this run (coordinator/concurrency.py), bounded
    concurrency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)


class RunGate(Base):
    """A workflow with concurrency limits: each start and each end of one of its runs updates this row
    first, so that (a row lock on Postgres, the write lock on SQLite) admissions happen one at a time."""

    __tablename__ = "run_gates"

    workflow: Mapped[str] = mapped_column(String(128), primary_key=True)
    touched_at: Mapped[datetime] = mapped_column(Timestamp)


class PoolSlots(Base):
    """A step pool with a limit: at most ``slots`` of its steps dispatched at once (coordinator/pools.py).
    Each admission to the pool updates this row first, so admissions happen one at a time."""

    __tablename__ = "pool_slots"

    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class RunStep(Base):
    __tablename__ = "run_steps"
    __table_args__ = (Index("ix_run_steps_result_due_at", "result_due_at"),
                      Index("ix_run_steps_pool", "pool", postgresql_where=text("pool IS NOT NULL"),
                            sqlite_where=text("pool IS NOT NULL")))

    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    step: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    first_attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # queued attempt of a step with a timeout: when its result is overdue (the reconciler's cue)
    result_due_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # the attempt an executor reported running (the step shows "running" while it is the current one)
    running_attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # why a queued step waits
    # needs not yet succeeded, kept for steps with more than one need: each success of a need brings
    # it down by one, the step is ready at 0
    waiting: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # a dispatched step of a cached task: the digest its output is stored under when it succeeds
    cache_key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    # an instance of a map step (fan[3]): its element of the list (coordinator/mapping.py)
    item: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # a map step being run: its elements, the next to dispatch, those not yet ended
    map_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    map_next: Mapped[int | None] = mapped_column(Integer, nullable=True)
    map_open: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # a step of a pool with slots: the pool it holds a slot of (queued) or waits for (pending, since)
    pool: Mapped[str | None] = mapped_column(String(64), nullable=True)
    slot_wait_since: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class StepCache(Base):
    """A reusable output (coordinator/cache.py): found by the digest of the task and its cache key."""

    __tablename__ = "step_cache"
    __table_args__ = (Index("ix_step_cache_expires_at", "expires_at"), Index("ix_step_cache_task", "task"))

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    task: Mapped[str] = mapped_column(String(128))
    workflow: Mapped[str] = mapped_column(String(128))  # where it was stored from (any workflow may reuse it)
    step: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(36))
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    size: Mapped[int] = mapped_column(Integer)  # bytes of the output's JSON
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_hit_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class StepAttempt(Base):
    __tablename__ = "step_attempts"
    __table_args__ = (UniqueConstraint("run_id", "step", "attempt", name="uq_step_attempts_run_step_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)  # masked and size-capped
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime] = mapped_column(Timestamp)
    duration_ms: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_created_at", "created_at"),)

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    queue_name: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    delay_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class HandledRequest(Base):
    __tablename__ = "handled_requests"
    __table_args__ = (Index("ix_handled_requests_handled_at", "handled_at"),)

    message_id: Mapped[str] = mapped_column(String(192), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str] = mapped_column(String(36))
    handled_at: Mapped[datetime] = mapped_column(Timestamp)


workflow_definitions = cast(Table, WorkflowDefinition.__table__)
runs = cast(Table, Run.__table__)
run_steps = cast(Table, RunStep.__table__)
step_attempts = cast(Table, StepAttempt.__table__)
outbox = cast(Table, OutboxMessage.__table__)
dead_letters = cast(Table, DeadLetter.__table__)
handled_requests = cast(Table, HandledRequest.__table__)
run_gates = cast(Table, RunGate.__table__)
step_cache = cast(Table, StepCache.__table__)
pool_slots = cast(Table, PoolSlots.__table__)
