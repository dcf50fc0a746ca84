"""The Alembic migrations build exactly the schema the models declare (on SQLite; Postgres is
checked the same way by the integration suite's `miniflow db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from miniflow.persistence import Database
from miniflow.persistence.models import Base


def test_upgraded_schema_matches_the_models(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        db.upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        db.dispose()
    assert diff == []
