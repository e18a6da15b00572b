"""Event messages: UpdateEventConfigurations' row and the event reader identities (issue 15, item 5)

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'event_configuration',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('enabled', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'event_readers',
        sa.Column('name', sa.String(length=64), primary_key=True),
        sa.Column('certificate_id', sa.String(length=64), nullable=False, unique=True),
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('identity', sa.String(length=1024), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('revoked_at', sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('event_readers')
    op.drop_table('event_configuration')
