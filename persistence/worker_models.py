"""The workers registry (issue 14, migration 0008_workers): one row per worker, timer or API process,
kept by its heartbeats.

    workers   node (host:pid), kind, roles, queues, threads, version, start time, the heartbeat interval it
              promised, its last heartbeat, what it runs now, and stopped_at once it stopped cleanly.
              Its state (alive, late, gone, stopped) is computed when read, from last_seen and interval_s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Float, Index, Integer, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, JSONType, Timestamp


class WorkerEntry(Base):
    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_last_seen", "last_seen"),)

    node: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # worker, timer, api
    roles: Mapped[str] = mapped_column(String(100))  # comma separated
    queues: Mapped[Any] = mapped_column(JSONType)  # the queue names it consumes (bounded list)
    threads: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(40))
    namespace: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    interval_s: Mapped[float] = mapped_column(Float)
    beat: Mapped[int] = mapped_column(Integer)  # the sequence number of the last heartbeat applied (older ones lose)
    busy: Mapped[int] = mapped_column(Integer)  # steps (or messages) being handled at the last heartbeat
    running: Mapped[Any] = mapped_column(JSONType)  # [{run_id, step, attempt, since}] (bounded list)
    stopped_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


workers = cast(Table, WorkerEntry.__table__)
