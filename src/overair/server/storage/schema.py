"""The metadata schema: one table per resource, timestamps as epoch seconds (UTC).

Changes go through Alembic migrations (`migrations/`); `overair serve` upgrades the
database at start-up. JSON columns hold values whose shape the service layer owns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class IamUser(Base):
    __tablename__ = "iam_users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), unique=True)
    arn: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(512), default="/")
    created_at: Mapped[float] = mapped_column(Float)


class AccessKey(Base):
    __tablename__ = "access_keys"
    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_name: Mapped[str] = mapped_column(ForeignKey("iam_users.name", ondelete="CASCADE"))
    # AES-GCM under the master key; see server/sealing.py.
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="Active")
    created_at: Mapped[float] = mapped_column(Float)


# IAM beyond users and keys (migration 0006). Policies attached by ARN may be overair's
# built-in managed policies (server/iam/managed.py), which have no row of their own.
class IamGroup(Base):
    __tablename__ = "iam_groups"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(32), unique=True)
    arn: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(512), default="/")
    created_at: Mapped[float] = mapped_column(Float)


class IamGroupMember(Base):
    __tablename__ = "iam_group_members"
    group_name: Mapped[str] = mapped_column(ForeignKey("iam_groups.name", ondelete="CASCADE"),
                                            primary_key=True)
    user_name: Mapped[str] = mapped_column(ForeignKey("iam_users.name", ondelete="CASCADE"),
                                           primary_key=True)


class IamRole(Base):
    __tablename__ = "iam_roles"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role_id: Mapped[str] = mapped_column(String(32), unique=True)
    arn: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(512), default="/")
    trust_policy: Mapped[str] = mapped_column(Text)  # the AssumeRolePolicyDocument as given
    description: Mapped[str] = mapped_column(Text, default="")
    max_session_duration: Mapped[int] = mapped_column(Integer, default=3600)
    created_at: Mapped[float] = mapped_column(Float)


class IamPolicy(Base):
    """A customer managed policy; its documents are the versions."""

    __tablename__ = "iam_policies"
    arn: Mapped[str] = mapped_column(String(256), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    policy_id: Mapped[str] = mapped_column(String(32), unique=True)
    path: Mapped[str] = mapped_column(String(512), default="/")
    description: Mapped[str] = mapped_column(Text, default="")
    default_version: Mapped[str] = mapped_column(String(8))
    next_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class IamPolicyVersion(Base):
    __tablename__ = "iam_policy_versions"
    policy_arn: Mapped[str] = mapped_column(ForeignKey("iam_policies.arn", ondelete="CASCADE"),
                                            primary_key=True)
    version_id: Mapped[str] = mapped_column(String(8), primary_key=True)
    document: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class IamAttachment(Base):
    """A managed policy attached to a user, group or role (principal_kind)."""

    __tablename__ = "iam_attachments"
    principal_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    principal_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy_arn: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)


class IamInlinePolicy(Base):
    __tablename__ = "iam_inline_policies"
    principal_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    principal_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    document: Mapped[str] = mapped_column(Text)


class StsSession(Base):
    """Temporary credentials from AssumeRole. The session token is kept only as a hash."""

    __tablename__ = "sts_sessions"
    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role_name: Mapped[str] = mapped_column(ForeignKey("iam_roles.name", ondelete="CASCADE"), index=True)
    session_name: Mapped[str] = mapped_column(String(64))
    arn: Mapped[str] = mapped_column(String(512))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    token_sha256: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    created_at: Mapped[float] = mapped_column(Float)


class Thing(Base):
    __tablename__ = "things"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    thing_id: Mapped[str] = mapped_column(String(64), unique=True)
    arn: Mapped[str] = mapped_column(String(256))
    thing_type_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[float] = mapped_column(Float)


class ThingGroup(Base):
    __tablename__ = "thing_groups"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64), unique=True)
    arn: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[float] = mapped_column(Float)
    # Dynamic thing groups (server/fleet/dynamic.py; migration 0013): the query that
    # decides membership (None: a static group), and AWS's status BUILDING, REBUILDING
    # or ACTIVE while the members are (re)computed.
    query_string: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    query_version: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    index_name: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")


class ThingGroupMember(Base):
    __tablename__ = "thing_group_members"
    __table_args__ = (Index("ix_thing_group_members_thing_group", "thing_name", "group_name"),)  # (0017)
    group_name: Mapped[str] = mapped_column(
        ForeignKey("thing_groups.name", ondelete="CASCADE"), primary_key=True)
    thing_name: Mapped[str] = mapped_column(
        ForeignKey("things.name", ondelete="CASCADE"), primary_key=True, index=True)
    added_at: Mapped[float] = mapped_column(Float)


class ThingRegistrationTask(Base):
    """A bulk registration task (server/registry/registration_tasks.py), AWS's shape."""

    __tablename__ = "thing_registration_tasks"
    __table_args__ = (Index("ix_thing_registration_tasks_created", "created_at", "task_id"),)
    task_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    template_body: Mapped[str] = mapped_column(Text)
    input_bucket: Mapped[str] = mapped_column(String(256))
    input_key: Mapped[str] = mapped_column(String(1024))
    role_arn: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    percentage: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    last_modified_at: Mapped[float] = mapped_column(Float)


class DeviceCertificate(Base):
    __tablename__ = "device_certificates"
    # ListCertificates pages by (created_at, certificate_id) (migration 0012).
    __table_args__ = (Index("ix_device_certificates_created", "created_at", "certificate_id"),)
    certificate_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    pem: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    last_modified_at: Mapped[float] = mapped_column(Float)


class RetiredCertificate(Base):
    """A deleted device certificate's serial, kept so the broker's CRL still refuses it
    (migration 0007)."""

    __tablename__ = "retired_certificates"
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    certificate_id: Mapped[str] = mapped_column(String(64))
    retired_at: Mapped[float] = mapped_column(Float)


class ThingPrincipal(Base):
    __tablename__ = "thing_principals"
    thing_name: Mapped[str] = mapped_column(
        ForeignKey("things.name", ondelete="CASCADE"), primary_key=True)
    principal: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)


class Bucket(Base):
    __tablename__ = "buckets"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    versioning: Mapped[str | None] = mapped_column(String(16), nullable=True)
    policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class ObjectVersion(Base):
    __tablename__ = "object_versions"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "version_id"),
        Index("ix_object_versions_bucket_key", "bucket", "key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(ForeignKey("buckets.name", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(1024))
    version_id: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(80))
    content_type: Mapped[str] = mapped_column(String(256), default="binary/octet-stream")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    delete_marker: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class MultipartUpload(Base):
    """An S3 multipart upload in progress (removed when completed or aborted)."""

    __tablename__ = "multipart_uploads"
    __table_args__ = (Index("ix_multipart_uploads_bucket_key", "bucket", "key"),)
    # Orders uploads of one key by initiation, as ListMultipartUploads does.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_id: Mapped[str] = mapped_column(String(64), unique=True)
    bucket: Mapped[str] = mapped_column(ForeignKey("buckets.name", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str] = mapped_column(String(256), default="binary/octet-stream")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    checksum_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)  # e.g. CRC32
    checksum_type: Mapped[str | None] = mapped_column(String(16), nullable=True)  # COMPOSITE, FULL_OBJECT
    initiator: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(Float)


class MultipartPart(Base):
    """One uploaded part; its bytes are a file named after (upload, number, sha256)."""

    __tablename__ = "multipart_parts"
    upload_id: Mapped[str] = mapped_column(
        ForeignKey("multipart_uploads.upload_id", ondelete="CASCADE"), primary_key=True)
    part_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    md5: Mapped[str] = mapped_column(String(32))  # hex; the part's ETag without quotes
    sha256: Mapped[str] = mapped_column(String(64))
    checksum_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(128), nullable=True)  # base64
    created_at: Mapped[float] = mapped_column(Float)


class SigningCertificate(Base):
    """A code-signing certificate in the certificate store (the acm service)."""

    __tablename__ = "signing_certificates"
    arn: Mapped[str] = mapped_column(String(256), primary_key=True)
    pem: Mapped[str] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_backend: Mapped[str] = mapped_column(String(32), default="software")
    serial: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    not_before: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32), default="ISSUED")
    development_only: Mapped[bool] = mapped_column(Boolean, default=False)
    imported_at: Mapped[float] = mapped_column(Float)
    # PKCS#11 keys: {"module", "token", "label"}; the PIN is what key_sealed then holds.
    key_ref: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    key_algorithm: Mapped[str] = mapped_column(String(32), default="")  # e.g. ECDSA-P256, RSA-2048
    self_signed: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revocation_reason: Mapped[str] = mapped_column(Text, default="")


class SigningProfile(Base):
    __tablename__ = "signing_profiles"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    platform_id: Mapped[str] = mapped_column(String(64))
    certificate_arn: Mapped[str] = mapped_column(ForeignKey("signing_certificates.arn"))
    certificate_path_on_device: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="Active")
    created_at: Mapped[float] = mapped_column(Float)
    version: Mapped[str] = mapped_column(String(16), default="1")
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revocation_reason: Mapped[str] = mapped_column(Text, default="")


class SigningJob(Base):
    __tablename__ = "signing_jobs"
    __table_args__ = (Index("ix_signing_jobs_created", "created_at", "job_id"),)  # (0017)
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile_name: Mapped[str] = mapped_column(String(64))
    client_request_token: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    source: Mapped[dict[str, Any]] = mapped_column()
    destination: Mapped[dict[str, Any]] = mapped_column()
    signed_object: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    platform_id: Mapped[str] = mapped_column(String(64), default="")
    certificate_arn: Mapped[str] = mapped_column(String(256), default="")
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Stream(Base):
    __tablename__ = "streams"
    __table_args__ = (Index("ix_streams_created", "created_at", "stream_id"),)  # ListStreams (0012)
    stream_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    version: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str] = mapped_column(Text, default="")
    # [{"fileId": 0, "s3Location": {"bucket", "key", "version"}}]
    files: Mapped[list[Any]] = mapped_column()
    role_arn: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"
    # ListJobs pages by (created_at, job_id) (migration 0012).
    __table_args__ = (Index("ix_jobs_created", "created_at", "job_id"),)
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(32), index=True)
    document: Mapped[dict[str, Any]] = mapped_column()
    description: Mapped[str] = mapped_column(Text, default="")
    targets: Mapped[list[Any]] = mapped_column()
    target_selection: Mapped[str] = mapped_column(String(16), default="SNAPSHOT")
    # AWS config blocks kept as given (rollout, abort, timeout, presigned URL, retry).
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    comment: Mapped[str] = mapped_column(Text, default="")
    reason_code: Mapped[str] = mapped_column(String(128), default="")
    force_canceled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    last_updated_at: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rollout_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobTemplate(Base):
    """A job template (CreateJobTemplate; migration 0007): a document and the job
    configuration blocks that CreateJob with `jobTemplateArn` starts from."""

    __tablename__ = "job_templates"
    __table_args__ = (Index("ix_job_templates_created", "created_at", "template_id"),)  # (0017)
    template_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    document: Mapped[dict[str, Any]] = mapped_column()
    document_source: Mapped[str] = mapped_column(Text, default="")
    # AWS config blocks kept as given (rollout, abort, timeout, presigned URL, retry,
    # maintenanceWindows).
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float)


class JobExecution(Base):
    __tablename__ = "job_executions"
    __table_args__ = (
        UniqueConstraint("job_id", "thing_name", "execution_number"),
        Index("ix_job_executions_thing_status", "thing_name", "status"),
        Index("ix_job_executions_job_released", "job_id", "released_at"),
        Index("ix_job_executions_job_status", "job_id", "status"),  # (0020) maybe_complete
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), index=True)
    thing_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    queued_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_updated_at: Mapped[float] = mapped_column(Float)
    version_number: Mapped[int] = mapped_column(Integer, default=1)
    execution_number: Mapped[int] = mapped_column(Integer, default=1)
    # NULL until the rollout releases it (devices and listings do not see it before).
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    timeout_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ThingShadow(Base):
    """A thing's classic (shadow_name "") or named shadow (migration 0008). A deleted
    shadow keeps its row (`present` false) so its version carries on, as in AWS."""

    __tablename__ = "thing_shadows"
    thing_name: Mapped[str] = mapped_column(ForeignKey("things.name", ondelete="CASCADE"), primary_key=True)
    shadow_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    desired: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reported: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    version: Mapped[int] = mapped_column(Integer)
    present: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[float] = mapped_column(Float)


class InstalledSoftware(Base):
    """What a thing runs, per package, since when (server/packages/inventory.py;
    migration 0009)."""

    __tablename__ = "installed_software"
    thing_name: Mapped[str] = mapped_column(ForeignKey("things.name", ondelete="CASCADE"), primary_key=True)
    package: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    since: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str] = mapped_column(String(64), default="")


class SoftwarePackage(Base):
    """A Software Package Catalog package (CreatePackage; migration 0010)."""

    __tablename__ = "software_packages"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    default_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SoftwarePackageVersion(Base):
    """A version of a package (CreatePackageVersion): DRAFT, PUBLISHED or DEPRECATED."""

    __tablename__ = "software_package_versions"
    __table_args__ = (  # ListPackageVersions (0017)
        Index("ix_software_package_versions_created", "package", "created_at", "version"),)
    package: Mapped[str] = mapped_column(ForeignKey("software_packages.name", ondelete="CASCADE"),
                                         primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(512))
    description: Mapped[str] = mapped_column(Text, default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    recipe: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PackageConfiguration(Base):
    """UpdatePackageConfiguration's one row (id 1): may jobs report package versions."""

    __tablename__ = "package_configuration"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    jobs_update_versions: Mapped[bool] = mapped_column(Boolean, default=False)
    role_arn: Mapped[str] = mapped_column(String(256), default="")


class FleetIndexing(Base):
    """UpdateIndexingConfiguration's one row (id 1; core/indexing.py's stored form);
    no row: overair's default (everything indexed). Migration 0013."""

    __tablename__ = "fleet_indexing"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[float] = mapped_column(Float)


class ThingConnectivity(Base):
    """Whether a thing is connected, since when, and why it last disconnected, from the
    broker's log (gateway/presence.py; migration 0011)."""

    __tablename__ = "thing_connectivity"
    thing_name: Mapped[str] = mapped_column(ForeignKey("things.name", ondelete="CASCADE"), primary_key=True)
    connected: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[float] = mapped_column(Float)
    disconnect_reason: Mapped[str] = mapped_column(String(64), default="")
    # The broker node whose events set this row (registry/connectivity.py; migration
    # 0019): with several server processes, only that node's events and restart change it.
    node: Mapped[str] = mapped_column(String(255), default="", server_default="")


class OtaUpdate(Base):
    __tablename__ = "ota_updates"
    # ListOTAUpdates pages by (created_at, ota_update_id) (migration 0012).
    __table_args__ = (Index("ix_ota_updates_created", "created_at", "ota_update_id"),)
    ota_update_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(32))
    # The whole CreateOTAUpdate request, so creation can resume after a restart.
    request: Mapped[dict[str, Any]] = mapped_column()
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stream_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_modified_at: Mapped[float] = mapped_column(Float)


class AuditEntry(Base):
    """One hash-chained audit entry (server/audit/chain.py). Append-only: written only by
    AuditLog, which assigns seq and the hashes under the head row's lock."""

    __tablename__ = "audit_log"
    # 64-bit: one entry per API request outgrows 32 bits. SQLite keeps INTEGER, the
    # rowid alias (a BIGINT key there would be a second index).
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                     autoincrement=False)
    at: Mapped[float] = mapped_column(Float, index=True)
    principal: Mapped[str] = mapped_column(String(256), index=True)
    action: Mapped[str] = mapped_column(String(128), index=True)
    resource: Mapped[str] = mapped_column(Text)
    decision: Mapped[str] = mapped_column(String(16))
    statement: Mapped[str] = mapped_column(Text, default="")  # the policy statement that decided
    source: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The audit chain's anchor: one row (id 1), the last seq and entry hash, updated in
    the same transaction as every append. Its row lock serialises appenders."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))


class EventConfiguration(Base):
    """UpdateEventConfigurations' one row (id 1; core/events.py's stored form: the
    enabled event types); no row: AWS's default, every type disabled. Migration 0015."""

    __tablename__ = "event_configuration"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    enabled: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class EventReader(Base):
    """An event reader (server/events/readers.py; migration 0015): a fleet certificate
    attached to no thing that may read `$aws/events/#` and nothing else. Its key is
    handed out once and never stored."""

    __tablename__ = "event_readers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    certificate_id: Mapped[str] = mapped_column(String(64), unique=True)
    serial: Mapped[str] = mapped_column(String(64))  # hex, for the CRL once revoked
    identity: Mapped[str] = mapped_column(String(1024))  # the broker identity (certificate subject)
    status: Mapped[str] = mapped_column(String(16))  # ACTIVE | REVOKED
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
class ProvisioningTemplate(Base):
    """A fleet provisioning template (server/provisioning/templates.py), AWS's shape; its
    bodies are its versions."""

    __tablename__ = "provisioning_templates"
    name: Mapped[str] = mapped_column(String(36), primary_key=True)
    template_id: Mapped[str] = mapped_column(String(36))
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    role_arn: Mapped[str] = mapped_column(String(2048))
    default_version: Mapped[int] = mapped_column(Integer)
    next_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    last_modified_at: Mapped[float] = mapped_column(Float)


class ProvisioningTemplateVersion(Base):
    __tablename__ = "provisioning_template_versions"
    template_name: Mapped[str] = mapped_column(
        String(36), ForeignKey("provisioning_templates.name", ondelete="CASCADE"), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class ClaimCertificate(Base):
    """A certificate a device may provision itself with, for one template (overair's
    stand-in for AWS's claim IoT policy; server/provisioning/claims.py)."""

    __tablename__ = "claim_certificates"
    certificate_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("device_certificates.certificate_id", ondelete="CASCADE"), primary_key=True)
    template_name: Mapped[str] = mapped_column(
        String(36), ForeignKey("provisioning_templates.name", ondelete="CASCADE"), primary_key=True,
        index=True)


class ThingGroupTag(Base):
    """A tag of a thing group (server/registry/tags.py; migration 0018). Keyed by the
    group's id, so a deleted group's tags go with it and a new group of the same name
    starts without them."""

    __tablename__ = "thing_group_tags"
    group_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("thing_groups.group_id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
