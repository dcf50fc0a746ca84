"""map steps

Revision: 0013 (after 0012)
run_steps.item: an instance of a map step (``fan[3]``): its element of the list it maps over, kept
so that its dispatch and its retries need not read the list again. run_steps.map_size, map_next
and map_open: a map step being run: its number of elements, the index of the next one to dispatch
(elements past its concurrency wait, pending), and how many have not ended.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run_steps") as batch:
        batch.add_column(sa.Column("item", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                  "postgresql"), nullable=True))
        batch.add_column(sa.Column("map_size", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("map_next", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("map_open", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_steps") as batch:
        for column in ("map_open", "map_next", "map_size", "item"):
            batch.drop_column(column)
