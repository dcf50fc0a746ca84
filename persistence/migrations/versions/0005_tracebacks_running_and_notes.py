"""tracebacks, running attempts and why a step waits

Revision: 0005 (after 0004)
step_attempts.traceback: the (masked, size-capped) traceback of a failed attempt.
run_steps.running_attempt: the attempt an executor reported as running (the step shows "running"
while it is the current, queued attempt).
run_steps.note: why a queued step waits (e.g. an executor without its task handed it back).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(sa.Column("traceback", sa.Text(), nullable=True))
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("running_attempt", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_steps") as batch:
        batch.drop_column("note")
        batch.drop_column("running_attempt")
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_column("traceback")
