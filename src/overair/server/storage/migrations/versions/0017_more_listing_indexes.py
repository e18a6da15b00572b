"""Indexes for the listings that page in the database since issue 20 (item 3): a thing's
groups by group name (ListThingGroupsForThing), signing jobs by creation time
(ListSigningJobs, one per signed OTA update), a package's versions by creation time
(ListPackageVersions) and job templates by creation time (ListJobTemplates)

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_thing_group_members_thing_group', 'thing_group_members', ['thing_name', 'group_name'])
    op.create_index('ix_signing_jobs_created', 'signing_jobs', ['created_at', 'job_id'])
    op.create_index('ix_software_package_versions_created', 'software_package_versions',
                    ['package', 'created_at', 'version'])
    op.create_index('ix_job_templates_created', 'job_templates', ['created_at', 'template_id'])


def downgrade() -> None:
    op.drop_index('ix_job_templates_created', table_name='job_templates')
    op.drop_index('ix_software_package_versions_created', table_name='software_package_versions')
    op.drop_index('ix_signing_jobs_created', table_name='signing_jobs')
    op.drop_index('ix_thing_group_members_thing_group', table_name='thing_group_members')
