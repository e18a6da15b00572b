"""Bulk registration tasks (issue 20, item 2)

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'thing_registration_tasks',
        sa.Column('task_id', sa.String(length=40), primary_key=True),
        sa.Column('template_body', sa.Text(), nullable=False),
        sa.Column('input_bucket', sa.String(length=256), nullable=False),
        sa.Column('input_key', sa.String(length=1024), nullable=False),
        sa.Column('role_arn', sa.String(length=2048), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('success_count', sa.Integer(), nullable=False),
        sa.Column('failure_count', sa.Integer(), nullable=False),
        sa.Column('percentage', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_modified_at', sa.Float(), nullable=False),
    )
    op.create_index('ix_thing_registration_tasks_status', 'thing_registration_tasks', ['status'])
    op.create_index('ix_thing_registration_tasks_created', 'thing_registration_tasks',
                    ['created_at', 'task_id'])


def downgrade() -> None:
    op.drop_index('ix_thing_registration_tasks_created', 'thing_registration_tasks')
    op.drop_index('ix_thing_registration_tasks_status', 'thing_registration_tasks')
    op.drop_table('thing_registration_tasks')
