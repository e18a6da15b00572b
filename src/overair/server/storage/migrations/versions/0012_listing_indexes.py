"""Indexes that keyset pagination reads pages over (issue 20): certificates by creation
time and jobs by creation time, so ListCertificates and ListJobs read one page, not the
whole table, at any depth

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
    op.create_index('ix_jobs_created', 'jobs', ['created_at', 'job_id'])
    op.create_index('ix_streams_created', 'streams', ['created_at', 'stream_id'])
    op.create_index('ix_ota_updates_created', 'ota_updates', ['created_at', 'ota_update_id'])


def downgrade() -> None:
    op.drop_index('ix_ota_updates_created', table_name='ota_updates')
    op.drop_index('ix_streams_created', table_name='streams')
    op.drop_index('ix_jobs_created', table_name='jobs')
    op.drop_index('ix_device_certificates_created', table_name='device_certificates')
