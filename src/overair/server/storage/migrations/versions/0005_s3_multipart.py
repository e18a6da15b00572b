"""S3 multipart uploads

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'multipart_uploads',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('upload_id', sa.String(length=64), nullable=False),
        sa.Column('bucket', sa.String(length=63), nullable=False),
        sa.Column('key', sa.String(length=1024), nullable=False),
        sa.Column('content_type', sa.String(length=256), nullable=False),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('checksum_algorithm', sa.String(length=16), nullable=True),
        sa.Column('checksum_type', sa.String(length=16), nullable=True),
        sa.Column('initiator', sa.String(length=256), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['bucket'], ['buckets.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('upload_id'),
    )
    with op.batch_alter_table('multipart_uploads') as batch:
        batch.create_index('ix_multipart_uploads_bucket_key', ['bucket', 'key'])
    op.create_table(
        'multipart_parts',
        sa.Column('upload_id', sa.String(length=64), nullable=False),
        sa.Column('part_number', sa.Integer(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('md5', sa.String(length=32), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('checksum_algorithm', sa.String(length=16), nullable=True),
        sa.Column('checksum', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['upload_id'], ['multipart_uploads.upload_id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('upload_id', 'part_number'),
    )


def downgrade() -> None:
    op.drop_table('multipart_parts')
    with op.batch_alter_table('multipart_uploads') as batch:
        batch.drop_index('ix_multipart_uploads_bucket_key')
    op.drop_table('multipart_uploads')
