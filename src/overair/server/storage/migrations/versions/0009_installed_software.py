"""What each thing runs: the version of each package, since when (issue 15)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'installed_software',
        sa.Column('thing_name', sa.String(length=128), sa.ForeignKey('things.name', ondelete='CASCADE'),
                  primary_key=True),
        sa.Column('package', sa.String(length=128), primary_key=True),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('since', sa.Float(), nullable=False),
        sa.Column('job_id', sa.String(length=64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('installed_software')
