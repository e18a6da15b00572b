"""`overair init`: a new data directory with everything a server and its fleet need.

Creates the fleet root CA (device identities), the broker's server certificate, the
service's client certificate, an empty CRL, a development code-signing root and signer
(labelled development-only; the root's private key is discarded once the signer is
issued, so it cannot sign anything else), the master key that seals secrets, the
database, and a first administrator access key in AWS shared-credentials format.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from overair.core.errors import MisuseError
from overair.server import pki
from overair.server.clock import Clock
from overair.server.files import write_atomic, write_private
from overair.server.iam import managed
from overair.server.iam.authorizer import OTA_SERVICE
from overair.server.iam.identity import IdentityStore
from overair.server.iam.policies import PolicyStore
from overair.server.iam.roles import RoleStore
from overair.server.ota.deployment import load_or_create_key
from overair.server.sealing import Sealer, create_master_key
from overair.server.settings import DataDir, Settings, dump_settings, split_password
from overair.server.signing.certstore import CertificateStore
from overair.server.signing.service import DEFAULT_PLATFORM, SigningService
from overair.server.storage.blob_config import make_blobs
from overair.server.storage.db import Database, migrate
from overair.server.storage.objects import ObjectStore
from overair.server.storage.upgrade import UpgradeReport, upgrade_database

ADMIN_USER = "admin"
# The OTA service role `overair init` creates; CreateOTAUpdate's roleArn names it.
DEFAULT_OTA_ROLE = "overair-ota"
# The bucket(s) that role may read firmware from (and write signed results to), unless
# `init --firmware-bucket` names others: least privilege (threat O1).
DEFAULT_FIRMWARE_BUCKETS = ("firmware",)
# Where signing jobs write their results (startSigningJobParameter's usual prefix).
SIGNED_PREFIX = "signed/"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
DATABASE_PASSWORD_FILE = "database-password"
DEV_PROFILE = "overair_dev"  # signer's model: profile names are [a-zA-Z0-9_]{2,}, no '-'
DEV_CERT_PATH_ON_DEVICE = "/certs/overair-dev-code-signing.pem"


@dataclass(frozen=True, slots=True)
class InitResult:
    settings: Settings
    access_key_id: str
    secret_access_key: str


def initialize(data_dir: Path, *, hostnames: tuple[str, ...] = (), http_port: int = 8080,
               mqtt_port: int = 8883, download_port: int = 8443, database_url: str = "",
               metrics_port: int = 0, force: bool = False,
               firmware_buckets: tuple[str, ...] = DEFAULT_FIRMWARE_BUCKETS,
               now: dt.datetime | None = None) -> InitResult:
    paths = DataDir(data_dir)
    buckets = _checked_buckets(firmware_buckets)
    if paths.config.exists():
        if not force:
            raise MisuseError(f"{data_dir} is already initialised; use --force to start over "
                              "(this destroys its keys, certificates and database)")
        shutil.rmtree(data_dir)
    if database_url:
        require_empty_database(database_url)
    fresh = not data_dir.exists() or not any(data_dir.iterdir())
    try:
        return _initialize(data_dir, paths, buckets, hostnames=hostnames, http_port=http_port,
                           mqtt_port=mqtt_port, download_port=download_port, database_url=database_url,
                           metrics_port=metrics_port, now=now)
    except BaseException:
        if fresh and data_dir.exists():  # nothing half-written stays: the directory is as it was
            for entry in data_dir.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        raise


def keep_password_apart(data_dir: Path, database_url: str) -> tuple[str, str]:
    """A password inside `database_url` goes to DATA/database-password (0600), never into
    overair.toml: returns the URL without it and the file's name ("" without a password)."""
    url, password = split_password(database_url)
    if password is None:
        return url, ""
    write_private(data_dir / DATABASE_PASSWORD_FILE, password.encode())
    return url, DATABASE_PASSWORD_FILE


def require_empty_database(url: str) -> None:
    """Refuse, before anything is written, a database that already holds tables: it is
    another installation's (its keys are elsewhere) or not overair's at all."""
    db = Database(url)
    try:
        tables = sorted(inspect(db.engine).get_table_names())
    except SQLAlchemyError as exc:
        raise MisuseError(f"cannot open the database {db.engine.url!r}: {exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0]}", code="DatabaseUnavailable") from None
    finally:
        db.close()
    if tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise MisuseError(f"the database {db.engine.url!r} is not empty (tables: {shown}); "
                          "`overair init` needs an empty database: create one, or point "
                          "--database-url at the installation's own data directory instead",
                          code="DatabaseNotEmpty")


def _initialize(data_dir: Path, paths: DataDir, buckets: tuple[str, ...], *, hostnames: tuple[str, ...],
                http_port: int, mqtt_port: int, download_port: int, database_url: str,
                metrics_port: int, now: dt.datetime | None) -> InitResult:
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    now = now or dt.datetime.now(dt.UTC)
    names = tuple(dict.fromkeys(("localhost", "127.0.0.1", *hostnames)))
    database_url, password_file = keep_password_apart(data_dir, database_url)
    settings = Settings(data_dir=data_dir, account_id=f"{secrets.randbelow(10**12):012d}",
                        hostnames=names, http_port=http_port, mqtt_port=mqtt_port,
                        download_port=download_port, metrics_port=metrics_port,
                        database_url=database_url, database_password_file=password_file)

    create_master_key(paths.master_key)
    fleet_ca = pki.make_root_ca("overair fleet root CA", now)
    _write_pair(paths.fleet_ca_cert, paths.fleet_ca_key, fleet_ca)
    _write_pair(paths.broker_cert, paths.broker_key, pki.issue_server_cert(fleet_ca, names, now))
    _write_pair(paths.service_cert, paths.service_key,
                pki.issue_client_cert(fleet_ca, pki.SERVICE_IDENTITY, now))
    write_atomic(paths.crl, pki.make_crl(fleet_ca, [], now))
    write_private(paths.url_signing_key, secrets.token_bytes(32))
    _write_pair(paths.revocation_signer_cert, paths.revocation_signer_key, pki.make_revocation_signer(now))
    # The deployment key (F1 F2), sealed; its public key goes into every bundle.
    load_or_create_key(paths.deployment_key, paths.deployment_keys, Sealer.load(paths.master_key))

    dev_root = pki.make_root_ca("overair DEVELOPMENT ONLY code-signing root", now,
                                org="overair development (not for production)")
    dev_signer = pki.issue_code_signing_cert(dev_root, "overair DEVELOPMENT ONLY signer", now)
    write_atomic(paths.code_signing_root, dev_root.cert_pem)

    db = Database(settings.db_url)
    try:
        migrate(db.engine)
        sealer = Sealer.load(paths.master_key)
        objects = ObjectStore(db, paths.objects,
                              blobs=make_blobs(settings.object_store, settings.data_dir, paths.objects))
        certificates = CertificateStore(db, settings, sealer, now.timestamp, lambda: [dev_root.cert])
        signing = SigningService(db, settings, certificates, objects, now.timestamp)
        cert_arn = certificates.import_certificate(dev_signer.cert_pem, dev_signer.key_pem,
                                                   development_only=True)
        signing.put_profile(DEV_PROFILE, DEFAULT_PLATFORM, cert_arn, DEV_CERT_PATH_ON_DEVICE)
        identity = IdentityStore(db, sealer, settings, now.timestamp)
        identity.create_user(ADMIN_USER)
        PolicyStore(db, settings, now.timestamp).attach("user", ADMIN_USER, managed.ADMINISTRATOR_ACCESS.arn)
        key, secret = identity.create_access_key(ADMIN_USER)
        key_id = key.access_key_id
        create_ota_service_role(db, sealer, settings, now.timestamp, buckets)
    finally:
        db.close()
    write_private(paths.credentials, (
        "# overair administrator credentials: keep them secret.\n"
        f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        f"region = {settings.region}\n").encode())
    write_atomic(paths.config, dump_settings(settings).encode())
    return InitResult(settings, key_id, secret)


def upgrade_installation(db: Database, sealer: Sealer, settings: Settings, clock: Clock) -> UpgradeReport:
    """Bring an installation made by an older overair up to this one (storage/upgrade.py):
    refuse a newer schema, back up, migrate, and create what `init` creates since."""
    def ota_role() -> None:
        create_ota_service_role(db, sealer, settings, clock)

    sqlite_file = settings.paths.database if not settings.database_url else None
    return upgrade_database(db.engine, sqlite_file=sqlite_file, backups=settings.paths.backups,
                            completions=(("0006", f"the OTA service role {DEFAULT_OTA_ROLE}", ota_role),))


def create_ota_service_role(db: Database, sealer: Sealer, settings: Settings, clock: Clock,
                            firmware_buckets: tuple[str, ...] = DEFAULT_FIRMWARE_BUCKETS) -> str:
    """The service role CreateOTAUpdate's roleArn names by default: the OTA service may
    assume it; it may do what the OTA Update Manager does (AWSIoTOTAUpdate equivalent),
    read firmware from `firmware_buckets` only and write signing results under their
    `signed/` prefix (as AWS's OTA service role needs s3:GetObject[Version] and
    s3:PutObject). Firmware elsewhere needs a grant: a bucket policy or another policy on
    the role (docs/security.md, "The OTA service role")."""
    roles = RoleStore(db, sealer, settings, clock)
    role = roles.create_role(DEFAULT_OTA_ROLE, json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": OTA_SERVICE},
                       "Action": "sts:AssumeRole"}]}), description="overair OTA service role")
    policies = PolicyStore(db, settings, clock)
    policies.attach("role", role.name, managed.AWS_IOT_OTA_UPDATE.arn)
    s3 = f"arn:{settings.partition}:s3:::"
    policies.put_inline("role", role.name, "Firmware", json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadFirmware", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
             "Resource": [f"{s3}{bucket}/*" for bucket in firmware_buckets]},
            {"Sid": "WriteSignedFirmware", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": [f"{s3}{bucket}/{SIGNED_PREFIX}*" for bucket in firmware_buckets]},
        ]}))
    return role.arn


def _checked_buckets(buckets: tuple[str, ...]) -> tuple[str, ...]:
    """Bucket names as S3 allows them; a wildcard would undo the least privilege."""
    if not buckets:
        raise MisuseError("name at least one firmware bucket (--firmware-bucket)")
    for bucket in buckets:
        if not _BUCKET_NAME.fullmatch(bucket):
            raise MisuseError(f"{bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.' and '-')")
    return tuple(dict.fromkeys(buckets))


def _write_pair(cert_path: Path, key_path: Path, issued: pki.Issued) -> None:
    write_private(key_path, issued.key_pem)
    write_atomic(cert_path, issued.cert_pem)
