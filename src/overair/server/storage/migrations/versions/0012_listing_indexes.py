"""Indexes that keyset pagination reads pages over (issue 20): certificates by creation
time, so ListCertificates reads one page, not the whole table, at any depth

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_device_certificates_created', 'device_certificates', ['created_at', 'certificate_id'])


def downgrade() -> None:
    op.drop_index('ix_device_certificates_created', table_name='device_certificates')
