"""The broker node a thing's connectivity was last recorded from (issue 17: several
server processes each with its own broker)

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('thing_connectivity') as batch:
        batch.add_column(sa.Column('node', sa.String(length=255), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('thing_connectivity') as batch:
        batch.drop_column('node')
