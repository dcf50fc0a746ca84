"""Durable state of MiniFlow: tables, migrations, the engine and the queries (Postgres or SQLite).

    db            Database: the engine, transactions, migrations; SQLAlchemy errors translated here
    models        the tables (and schedule_models, the cron timer's)
    rows          rows as typed objects, as the queries return them
    repository    the queries, one module per table group
    fastpath      the Postgres-only round-trip savers of the per-step hot path
"""

from . import repository
from .db import DEFAULT_SQLITE_URL, Database, after_commit, normalise_url
from .models import Base
from .rows import (
    AttemptRow,
    AuditRow,
    CacheRow,
    DeadLetterRow,
    DefinitionRow,
    OutboxRow,
    RunRow,
    ScheduleRow,
    StepRow,
    TickRow,
    WorkerRow,
)

__all__ = [
    "DEFAULT_SQLITE_URL", "AttemptRow", "AuditRow", "CacheRow",
    "Base", "Database", "DeadLetterRow", "DefinitionRow", "OutboxRow",
    "RunRow", "ScheduleRow", "StepRow", "TickRow", "WorkerRow", "after_commit", "normalise_url", "repository",
]
