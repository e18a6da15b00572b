"""job scheduling: staged release of executions, execution deadlines, rollout state

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_executions') as batch:
        # NULL until the rollout releases the execution: devices and listings do not see it.
        batch.add_column(sa.Column('released_at', sa.Float(), nullable=True))
        # When an IN_PROGRESS execution times out (job timeout or the device's step timeout).
        batch.add_column(sa.Column('timeout_at', sa.Float(), nullable=True))
        batch.create_index('ix_job_executions_job_released', ['job_id', 'released_at'])
    op.execute("UPDATE job_executions SET released_at = queued_at")
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('rollout_state', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('rollout_state')
    with op.batch_alter_table('job_executions') as batch:
        batch.drop_index('ix_job_executions_job_released')
        batch.drop_column('timeout_at')
        batch.drop_column('released_at')
