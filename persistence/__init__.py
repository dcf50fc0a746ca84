"""Durable state of MiniFlow: tables, migrations, the engine and the queries (Postgres or SQLite)."""

from . import repository
from .db import DEFAULT_SQLITE_URL, Database, mask_url, normalise_url
from .models import Base

__all__ = ["DEFAULT_SQLITE_URL", "Base", "Database", "mask_url", "normalise_url", "repository"]
