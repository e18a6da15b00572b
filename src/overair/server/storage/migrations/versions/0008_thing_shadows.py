"""Device Shadow service: classic and named shadows of things (issue 15)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'thing_shadows',
        sa.Column('thing_name', sa.String(length=128), sa.ForeignKey('things.name', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('shadow_name', sa.String(length=64), primary_key=True),
        sa.Column('desired', sa.JSON(), nullable=False),
        sa.Column('reported', sa.JSON(), nullable=False),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('present', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('thing_shadows')
