"""Rollouts you can steer (issue 15): job templates, and the serials of deleted device
certificates (kept in the broker's CRL)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retired_certificates',
        sa.Column('serial', sa.String(length=64), primary_key=True),
        sa.Column('certificate_id', sa.String(length=64), nullable=False),
        sa.Column('retired_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'job_templates',
        sa.Column('template_id', sa.String(length=64), primary_key=True),
        sa.Column('arn', sa.String(length=256), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('document', sa.JSON(), nullable=False),
        sa.Column('document_source', sa.Text(), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('job_templates')
    op.drop_table('retired_certificates')
