"""IAM identity store: groups, roles, managed policies with versions, inline policies,
attachments, STS sessions

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# Before authorization existed every key could do everything. Users created then keep
# that (they are the operators who set the server up) through the built-in policy.
_ADMINISTRATOR_ACCESS = "arn:aws:iam::aws:policy/AdministratorAccess"


def upgrade() -> None:
    with op.batch_alter_table('iam_users') as batch:
        batch.add_column(sa.Column('path', sa.String(length=512), nullable=False, server_default='/'))
    op.create_table(
        'iam_groups',
        sa.Column('name', sa.String(length=128), primary_key=True),
        sa.Column('group_id', sa.String(length=32), nullable=False, unique=True),
        sa.Column('arn', sa.String(length=256), nullable=False),
        sa.Column('path', sa.String(length=512), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'iam_group_members',
        sa.Column('group_name', sa.String(length=128),
                  sa.ForeignKey('iam_groups.name', ondelete='CASCADE'), primary_key=True),
        sa.Column('user_name', sa.String(length=64),
                  sa.ForeignKey('iam_users.name', ondelete='CASCADE'), primary_key=True),
    )
    op.create_table(
        'iam_roles',
        sa.Column('name', sa.String(length=64), primary_key=True),
        sa.Column('role_id', sa.String(length=32), nullable=False, unique=True),
        sa.Column('arn', sa.String(length=256), nullable=False),
        sa.Column('path', sa.String(length=512), nullable=False),
        sa.Column('trust_policy', sa.Text(), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('max_session_duration', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'iam_policies',
        sa.Column('arn', sa.String(length=256), primary_key=True),
        sa.Column('name', sa.String(length=128), nullable=False, unique=True),
        sa.Column('policy_id', sa.String(length=32), nullable=False, unique=True),
        sa.Column('path', sa.String(length=512), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('default_version', sa.String(length=8), nullable=False),
        sa.Column('next_version', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'iam_policy_versions',
        sa.Column('policy_arn', sa.String(length=256),
                  sa.ForeignKey('iam_policies.arn', ondelete='CASCADE'), primary_key=True),
        sa.Column('version_id', sa.String(length=8), primary_key=True),
        sa.Column('document', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'iam_attachments',
        sa.Column('principal_kind', sa.String(length=8), primary_key=True),
        sa.Column('principal_name', sa.String(length=128), primary_key=True),
        sa.Column('policy_arn', sa.String(length=256), primary_key=True),
    )
    op.create_index('ix_iam_attachments_policy_arn', 'iam_attachments', ['policy_arn'])
    op.create_table(
        'iam_inline_policies',
        sa.Column('principal_kind', sa.String(length=8), primary_key=True),
        sa.Column('principal_name', sa.String(length=128), primary_key=True),
        sa.Column('policy_name', sa.String(length=128), primary_key=True),
        sa.Column('document', sa.Text(), nullable=False),
    )
    op.create_table(
        'sts_sessions',
        sa.Column('access_key_id', sa.String(length=32), primary_key=True),
        sa.Column('role_name', sa.String(length=64),
                  sa.ForeignKey('iam_roles.name', ondelete='CASCADE'), nullable=False),
        sa.Column('session_name', sa.String(length=64), nullable=False),
        sa.Column('arn', sa.String(length=512), nullable=False),
        sa.Column('secret_sealed', sa.LargeBinary(), nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_index('ix_sts_sessions_role_name', 'sts_sessions', ['role_name'])
    op.create_index('ix_sts_sessions_expires_at', 'sts_sessions', ['expires_at'])
    op.execute(sa.text(
        "INSERT INTO iam_attachments (principal_kind, principal_name, policy_arn) "
        "SELECT 'user', name, :policy FROM iam_users").bindparams(policy=_ADMINISTRATOR_ACCESS))


def downgrade() -> None:
    op.drop_index('ix_sts_sessions_expires_at', 'sts_sessions')
    op.drop_index('ix_sts_sessions_role_name', 'sts_sessions')
    op.drop_table('sts_sessions')
    op.drop_table('iam_inline_policies')
    op.drop_index('ix_iam_attachments_policy_arn', 'iam_attachments')
    op.drop_table('iam_attachments')
    op.drop_table('iam_policy_versions')
    op.drop_table('iam_policies')
    op.drop_table('iam_roles')
    op.drop_table('iam_group_members')
    op.drop_table('iam_groups')
    with op.batch_alter_table('iam_users') as batch:
        batch.drop_column('path')
