"""Alembic environment: the connection is handed over by persistence.db.upgrade()."""

from alembic import context

from miniflow.persistence import key_models, schedule_models, session_models, worker_models  # noqa: F401  (registers their tables)
from miniflow.persistence.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: use the configured URL
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    connection = engine.connect()

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
