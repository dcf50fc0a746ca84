"""handled requests and result deadlines

Revision: 0004 (after 0003)
handled_requests: the message id of every retry_run the coordinator acted on, so that the same
message delivered twice (a redelivery after a crash between commit and ack) re-runs a run once.
run_steps.result_due_at: for a queued attempt of a step with a timeout, when its result is overdue
(queued + delay + timeout + grace); the reconciler records an attempt still without a result then
as lost.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handled_requests",
        sa.Column("message_id", sa.String(length=192), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_handled_requests")),
    )
    op.create_index("ix_handled_requests_handled_at", "handled_requests", ["handled_at"], unique=False)
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("result_due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_run_steps_result_due_at", "run_steps", ["result_due_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_run_steps_result_due_at", table_name="run_steps")
    with op.batch_alter_table("run_steps") as batch:
        batch.drop_column("result_due_at")
    op.drop_index("ix_handled_requests_handled_at", table_name="handled_requests")
    op.drop_table("handled_requests")
