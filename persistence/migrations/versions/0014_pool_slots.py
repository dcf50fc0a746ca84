"""slots of step pools

Revision: 0014 (after 0013)
pool_slots: the most steps of a pool (a step queue) dispatched at once, across runs and workflows
(`miniflow pools set`); each dispatch of one of its steps takes the row first, so admissions of a
pool happen one at a time. run_steps.pool: the limited pool a step holds a slot of while queued, or
waits for a slot of while pending (then slot_wait_since says since when); cleared once it no longer
does (by the next admission pass of the pool), so the partial index on it stays small.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_slots",
        sa.Column("pool", sa.String(length=64), primary_key=True),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("pool", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("slot_wait_since", sa.DateTime(timezone=True), nullable=True))
    # Partial, on the pool alone: the rows of steps of no limited pool (nearly all) are not in it, and
    # a step's changes of status keep their HOT updates (an index on status would block them).
    op.create_index("ix_run_steps_pool", "run_steps", ["pool"], postgresql_where=sa.text("pool IS NOT NULL"),
                    sqlite_where=sa.text("pool IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_run_steps_pool", table_name="run_steps")
    with op.batch_alter_table("run_steps") as batch:
        batch.drop_column("slot_wait_since")
        batch.drop_column("pool")
    op.drop_table("pool_slots")
