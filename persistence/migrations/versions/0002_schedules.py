"""schedules and the tick ledger (issue 4: the cron timer)

Revision: 0002 (after 0001)
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('schedules',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('workflow', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('cron', sa.String(length=200), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('params', JSON, nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('jitter_s', sa.Float(), nullable=False),
    sa.Column('catch_up', sa.String(length=16), nullable=False),
    sa.Column('catch_up_limit', sa.Integer(), nullable=False),
    sa.Column('catch_up_grace_s', sa.Float(), nullable=False),
    sa.Column('overlap', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('next_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source', sa.String(length=512), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules')),
    sa.UniqueConstraint('name', name=op.f('uq_schedules_name'))
    )
    op.create_index('ix_schedules_next_due_at', 'schedules', ['next_due_at'], unique=False)
    op.create_table('schedule_ticks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('schedule_id', sa.String(length=36), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lateness_ms', sa.Float(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('node', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], name=op.f('fk_schedule_ticks_schedule_id_schedules'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_ticks')),
    sa.UniqueConstraint('schedule_id', 'due_at', name='uq_schedule_ticks_schedule_id_due_at')
    )
    op.create_index('ix_schedule_ticks_outcome', 'schedule_ticks', ['outcome'], unique=False)
    op.create_index('ix_schedule_ticks_schedule_id_fired_at', 'schedule_ticks', ['schedule_id', 'fired_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_schedule_ticks_schedule_id_fired_at', table_name='schedule_ticks')
    op.drop_index('ix_schedule_ticks_outcome', table_name='schedule_ticks')
    op.drop_table('schedule_ticks')
    op.drop_index('ix_schedules_next_due_at', table_name='schedules')
    op.drop_table('schedules')
