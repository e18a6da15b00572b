"""Software Package Catalog: packages, package versions, the package configuration (issue 15)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'software_packages',
        sa.Column('name', sa.String(length=128), primary_key=True),
        sa.Column('arn', sa.String(length=256), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('default_version', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'software_package_versions',
        sa.Column('package', sa.String(length=128),
                  sa.ForeignKey('software_packages.name', ondelete='CASCADE'), primary_key=True),
        sa.Column('version', sa.String(length=64), primary_key=True),
        sa.Column('arn', sa.String(length=512), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('attributes', sa.JSON(), nullable=False),
        sa.Column('artifact', sa.JSON(), nullable=True),
        sa.Column('recipe', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'package_configuration',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column('jobs_update_versions', sa.Boolean(), nullable=False),
        sa.Column('role_arn', sa.String(length=256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('package_configuration')
    op.drop_table('software_package_versions')
    op.drop_table('software_packages')
