"""code-signing store: key references (PKCS#11), revocation, self-signed flag, profile
revocation, signing job platform

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signing_certificates') as batch:
        # PKCS#11: where the key lives (module, token, object label); the PIN is sealed
        # in key_sealed. Software keys: NULL, the sealed PKCS#8 key is in key_sealed.
        batch.add_column(sa.Column('key_ref', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('self_signed', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('revoked_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('revocation_reason', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('key_algorithm', sa.String(length=32), nullable=False,
                                   server_default=''))
    with op.batch_alter_table('signing_profiles') as batch:
        batch.add_column(sa.Column('revoked_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('revocation_reason', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('version', sa.String(length=16), nullable=False, server_default='1'))
    with op.batch_alter_table('signing_jobs') as batch:
        batch.add_column(sa.Column('platform_id', sa.String(length=64), nullable=False, server_default=''))
        batch.add_column(sa.Column('certificate_arn', sa.String(length=256), nullable=False,
                                   server_default=''))
        batch.add_column(sa.Column('revoked_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('signing_jobs') as batch:
        batch.drop_column('revoked_at')
        batch.drop_column('certificate_arn')
        batch.drop_column('platform_id')
    with op.batch_alter_table('signing_profiles') as batch:
        batch.drop_column('version')
        batch.drop_column('revocation_reason')
        batch.drop_column('revoked_at')
    with op.batch_alter_table('signing_certificates') as batch:
        batch.drop_column('key_algorithm')
        batch.drop_column('revocation_reason')
        batch.drop_column('revoked_at')
        batch.drop_column('self_signed')
        batch.drop_column('key_ref')
