"""Tags of thing groups (CreateDynamicThingGroup's `tags`, TagResource; issue 15)

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'thing_group_tags',
        sa.Column('group_id', sa.String(length=64),
                  sa.ForeignKey('thing_groups.group_id', ondelete='CASCADE'), primary_key=True),
        sa.Column('key', sa.String(length=128), primary_key=True),
        sa.Column('value', sa.String(length=256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('thing_group_tags')
