"""the result cache of steps

Revision: 0012 (after 0011)
step_cache: a step's output by the digest of its task and cache key, with when it expires and how
often it was reused; run_steps.cache_key: the digest a dispatched step of a cached task will be
stored under when it succeeds.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_cache",
        sa.Column("digest", sa.String(length=80), primary_key=True),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("workflow", sa.String(length=128), nullable=False),
        sa.Column("step", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("output", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                  nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_hit_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_step_cache_expires_at", "step_cache", ["expires_at"])
    op.create_index("ix_step_cache_task", "step_cache", ["task"])
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("cache_key", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_steps") as batch:
        batch.drop_column("cache_key")
    op.drop_index("ix_step_cache_task", table_name="step_cache")
    op.drop_index("ix_step_cache_expires_at", table_name="step_cache")
    op.drop_table("step_cache")
