"""The tables of the cron timer (issue 4). Alembic migration 0002_schedules.

    schedules         one row per schedule: the expression, its policies and the cursor next_due_at
    schedule_ticks    the tick ledger: one row per (schedule, due tick), UNIQUE (schedule_id, due_at)
                      is the exactly-once fence; the row records the tick's outcome
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, JSONType, Timestamp


class Schedule(Base):
    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_next_due_at", "next_due_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    workflow: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    start_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    end_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    jitter_s: Mapped[float] = mapped_column(Float, default=0.0)
    catch_up: Mapped[str] = mapped_column(String(16))
    catch_up_limit: Mapped[int] = mapped_column(Integer, default=1)
    catch_up_grace_s: Mapped[float] = mapped_column(Float, default=60.0)
    overlap: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_due_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    source: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class ScheduleTick(Base):
    __tablename__ = "schedule_ticks"
    __table_args__ = (
        UniqueConstraint("schedule_id", "due_at", name="uq_schedule_ticks_schedule_id_due_at"),
        Index("ix_schedule_ticks_outcome", "outcome"),
        Index("ix_schedule_ticks_schedule_id_fired_at", "schedule_id", "fired_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(String(36), ForeignKey("schedules.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column(Timestamp)
    kind: Mapped[str] = mapped_column(String(8))  # cron | manual
    outcome: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    fired_at: Mapped[datetime] = mapped_column(Timestamp)  # when the outcome was recorded
    lateness_ms: Mapped[float] = mapped_column(Float)  # fired_at - due_at
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)


schedules = cast(Table, Schedule.__table__)
schedule_ticks = cast(Table, ScheduleTick.__table__)
