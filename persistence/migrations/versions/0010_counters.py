"""counters of open steps and waiting needs

Revision: 0010 (after 0009)
runs.open_ends (ends, steps nothing needs, not yet succeeded) and run_steps.waiting (needs not yet
succeeded): a result updates the counters of the steps that need it and of its run instead of
reading every step of the run, so its cost does not grow with the width of the run. Existing runs
keep NULL: the coordinator counts a run's steps the first time it advances it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("open_ends", sa.Integer(), nullable=True))
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("waiting", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_steps") as batch:
        batch.drop_column("waiting")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("open_ends")
