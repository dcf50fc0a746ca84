"""handled requests

Revision: 0004 (after 0003)
handled_requests: the message id of every retry_run the coordinator acted on, so that the same
message delivered twice (a redelivery after a crash between commit and ack) re-runs a run once.
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


def downgrade() -> None:
    op.drop_index("ix_handled_requests_handled_at", table_name="handled_requests")
    op.drop_table("handled_requests")
