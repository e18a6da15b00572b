"""hash-chained audit log

Revision ID: 0004
Revises: 0003

Adds the deciding statement and the two chain hashes to `audit_log`, and the one-row
`audit_head` anchor. Entries written before this revision are chained here, in seq
order, so that `overair audit verify` passes on an upgraded database; they are
renumbered 1..n first because PostgreSQL sequences leave gaps (rolled-back inserts)
that the verifier would report as deleted entries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from overair.server.audit import chain

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_log = sa.table(
    "audit_log",
    sa.column("seq", sa.BigInteger), sa.column("at", sa.Float), sa.column("principal", sa.String),
    sa.column("action", sa.String), sa.column("resource", sa.Text), sa.column("decision", sa.String),
    sa.column("statement", sa.Text), sa.column("source", sa.String), sa.column("detail", sa.JSON),
    sa.column("prev_hash", sa.String), sa.column("entry_hash", sa.String),
)
_head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger),
                 sa.column("entry_hash", sa.String))


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table('audit_log') as batch:
        batch.add_column(sa.Column('statement', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('entry_hash', sa.String(length=64), nullable=True))
    if bind.dialect.name == "postgresql":  # SQLite's INTEGER key is 64-bit already
        op.alter_column('audit_log', 'seq', type_=sa.BigInteger(), existing_nullable=False)
    op.create_table('audit_head',
                    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
                    sa.Column('seq', sa.BigInteger(), nullable=False),
                    sa.Column('entry_hash', sa.String(length=64), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    head = _chain_existing(bind)
    op.execute(_head.insert().values(id=1, seq=head.seq, entry_hash=head.entry_hash))
    with op.batch_alter_table('audit_log') as batch:
        batch.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=False)
        batch.alter_column('entry_hash', existing_type=sa.String(length=64), nullable=False)


def _chain_existing(bind: sa.Connection) -> chain.Head:
    rows = bind.execute(sa.select(_log.c.seq, _log.c.at, _log.c.principal, _log.c.action,
                                  _log.c.resource, _log.c.decision, _log.c.source, _log.c.detail)
                        .order_by(_log.c.seq)).all()
    head = chain.EMPTY_HEAD
    for row in rows:
        fields = chain.EntryFields(time=float(row.at), principal=row.principal, action=row.action,
                                   resource=row.resource, decision=row.decision, statement="",
                                   source=row.source, detail=row.detail)
        entry = chain.seal(head, fields)
        # Ascending order makes the renumbering collision-free: entry.seq <= row.seq, and
        # every smaller number is already taken by an earlier row.
        bind.execute(_log.update().where(_log.c.seq == row.seq)
                     .values(seq=entry.seq, prev_hash=entry.prev_hash, entry_hash=entry.entry_hash))
        head = chain.Head(entry.seq, entry.entry_hash)
    return head


def downgrade() -> None:
    op.drop_table('audit_head')
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column('audit_log', 'seq', type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table('audit_log') as batch:
        batch.drop_column('entry_hash')
        batch.drop_column('prev_hash')
        batch.drop_column('statement')
