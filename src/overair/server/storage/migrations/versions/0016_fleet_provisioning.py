"""Fleet provisioning templates, their versions and claim certificates (issue 20, item 2)

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'provisioning_templates',
        sa.Column('name', sa.String(length=36), primary_key=True),
        sa.Column('template_id', sa.String(length=36), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('role_arn', sa.String(length=2048), nullable=False),
        sa.Column('default_version', sa.Integer(), nullable=False),
        sa.Column('next_version', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_modified_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'provisioning_template_versions',
        sa.Column('template_name', sa.String(length=36),
                  sa.ForeignKey('provisioning_templates.name', ondelete='CASCADE'), primary_key=True),
        sa.Column('version_id', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'claim_certificates',
        sa.Column('certificate_id', sa.String(length=64),
                  sa.ForeignKey('device_certificates.certificate_id', ondelete='CASCADE'), primary_key=True),
        sa.Column('template_name', sa.String(length=36),
                  sa.ForeignKey('provisioning_templates.name', ondelete='CASCADE'), primary_key=True),
    )
    op.create_index('ix_claim_certificates_template_name', 'claim_certificates', ['template_name'])


def downgrade() -> None:
    op.drop_index('ix_claim_certificates_template_name', 'claim_certificates')
    op.drop_table('claim_certificates')
    op.drop_table('provisioning_template_versions')
    op.drop_table('provisioning_templates')
