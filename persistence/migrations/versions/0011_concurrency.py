"""concurrency limits of runs

Revision: 0011 (after 0010)
runs.concurrency_key (the value of a workflow's concurrency key for the run, when it has one) and
an index on (workflow, status, concurrency_key) to count a workflow's running runs; run_gates, one
row per workflow with limits, which every start and every end of such a run updates first so that
the coordinators decide its admissions one at a time. A run waiting for a slot is `queued`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("concurrency_key", sa.String(length=255), nullable=True))
    op.create_index("ix_runs_workflow_status", "runs", ["workflow", "status", "concurrency_key"])
    op.create_table(
        "run_gates",
        sa.Column("workflow", sa.String(length=128), primary_key=True),
        sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_gates")
    op.drop_index("ix_runs_workflow_status", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("concurrency_key")
