"""Fleet indexing configuration and dynamic thing groups (issue 15, item 3)

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'fleet_indexing',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )
    with op.batch_alter_table('thing_groups') as batch:
        batch.add_column(sa.Column('query_string', sa.Text(), nullable=True))
        batch.add_column(sa.Column('query_version', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('index_name', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('status', sa.String(length=16), nullable=False, server_default='ACTIVE'))


def downgrade() -> None:
    with op.batch_alter_table('thing_groups') as batch:
        batch.drop_column('status')
        batch.drop_column('index_name')
        batch.drop_column('query_version')
        batch.drop_column('query_string')
    op.drop_table('fleet_indexing')
