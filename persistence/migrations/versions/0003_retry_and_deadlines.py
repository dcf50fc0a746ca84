"""run retries and workflow deadlines

Revision: 0003 (after 0002)
run_steps.first_attempt: the attempt number at which a step's current retry budget began (a
`miniflow runs retry` gives failed steps a fresh budget, attempt numbers keep counting up).
runs.deadline_at: when a run with a workflow timeout must have ended.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("first_attempt", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_runs_deadline_at", "runs", ["deadline_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_runs_deadline_at", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("deadline_at")
    with op.batch_alter_table("run_steps") as batch:
        batch.drop_column("first_attempt")
