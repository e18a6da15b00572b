"""Connectivity of things, from the broker: connected, since when, why it left (issue 15)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'thing_connectivity',
        sa.Column('thing_name', sa.String(length=128), sa.ForeignKey('things.name', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('connected', sa.Boolean(), nullable=False),
        sa.Column('changed_at', sa.Float(), nullable=False),
        sa.Column('disconnect_reason', sa.String(length=64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('thing_connectivity')
