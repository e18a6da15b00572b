"""`overair signing ...` and `overair sign`: the certificate store and the signing
service, through the same acm/signer API that boto3 and the AWS CLI use."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from overair.cli.common import DataDirOption, api_client, api_errors, out
from overair.core.errors import MisuseError

signing_app = typer.Typer(help="Code-signing certificates, profiles and revocation.", no_args_is_help=True)
profile_app = typer.Typer(help="Signing profiles.", no_args_is_help=True)
signing_app.add_typer(profile_app, name="profile")
DEFAULT_BUCKET = "overair-signing"


@signing_app.command("import-cert")
def import_cert(
    data_dir: DataDirOption,
    cert: Annotated[Path, typer.Option(help="The code-signing certificate (PEM).")],
    key: Annotated[Path | None, typer.Option(help="Its private key (PEM, unencrypted).")] = None,
    pkcs11_uri: Annotated[
        str | None,
        typer.Option(
            help="Instead of --key: an RFC 7512 URI of the key in an HSM, e.g. "
            "'pkcs11:token=T;object=L?module-path=/usr/lib/softhsm/libsofthsm2.so"
            "&pin-value=1234'. The key never leaves the HSM."
        ),
    ] = None,
    chain: Annotated[Path | None, typer.Option(help="Intermediate certificates (PEM).")] = None,
) -> None:
    """Import a code-signing certificate into the certificate store (acm ImportCertificate)."""
    with api_errors():
        if (key is None) == (pkcs11_uri is None):
            raise MisuseError("give exactly one of --key and --pkcs11-uri")
        private = key.read_bytes() if key is not None else str(pkcs11_uri).encode()
        params: dict[str, Any] = {"Certificate": cert.read_bytes(), "PrivateKey": private}
        if chain is not None:
            params["CertificateChain"] = chain.read_bytes()
        arn = api_client(data_dir, "acm").import_certificate(**params)["CertificateArn"]
    out.print(arn)


@signing_app.command("list")
def list_certs(data_dir: DataDirOption,
               json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
               ) -> None:
    """The certificate store, with expiry and warnings. Certificates are shown by their
    full ARN, which is what `signing profile create --certificate-arn` takes."""
    rows: list[dict[str, Any]] = []
    with api_errors():
        acm = api_client(data_dir, "acm")
        for page in acm.get_paginator("list_certificates").paginate():
            for summary in page["CertificateSummaryList"]:
                arn = summary["CertificateArn"]
                flags = [t["Key"].removeprefix("overair:")
                         for t in acm.list_tags_for_certificate(CertificateArn=arn)["Tags"]]
                rows.append({"certificateArn": arn, "subject": summary.get("DomainName", ""),
                             "keyAlgorithm": summary.get("KeyAlgorithm", ""), "status": summary["Status"],
                             "notAfter": summary["NotAfter"].isoformat(), "warnings": flags})
    if json_output:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(title="code-signing certificates")
    # ARNs are folded, never cut: they must stay whole to be copied.
    table.add_column("certificate ARN", overflow="fold")
    for column in ("subject", "key", "status", "expires", "warnings"):
        table.add_column(column)
    for row in rows:
        warnings = f"[yellow]{escape(', '.join(row['warnings']))}[/yellow]" if row["warnings"] else ""
        table.add_row(escape(row["certificateArn"]), escape(row["subject"]), row["keyAlgorithm"],
                      row["status"], row["notAfter"][:10], warnings)
    out.print(table)


@signing_app.command("revoke")
def revoke(
    data_dir: DataDirOption,
    certificate_arn: str,
    reason: Annotated[str, typer.Option(help="Why (e.g. 'key compromise').")] = "",
) -> None:
    """Revoke a code-signing certificate: it signs nothing more, OTA updates with its
    signatures are refused, and overair agents are sent a signed revocation list."""
    with api_errors():
        answer = api_client(data_dir, "overair").revoke_code_signing_certificate(
            CertificateArn=certificate_arn, Reason=reason
        )
    out.print(f"revoked {certificate_arn} (revocation list sequence {answer['RevocationSequence']})")


@profile_app.command("create")
def profile_create(
    data_dir: DataDirOption,
    name: str,
    certificate_arn: Annotated[str, typer.Option(help="The certificate that signs.")],
    cert_path_on_device: Annotated[
        str, typer.Option(help="Where FreeRTOS devices hold the certificate (the job's certfile).")
    ],
    platform: Annotated[str, typer.Option(help="Signing platform.")] = "AmazonFreeRTOS-Default",
) -> None:
    """Create a signing profile (signer PutSigningProfile)."""
    with api_errors():
        answer = api_client(data_dir, "signer").put_signing_profile(
            profileName=name,
            platformId=platform,
            signingMaterial={"certificateArn": certificate_arn},
            signingParameters={"certname": cert_path_on_device},
        )
    out.print(answer["arn"])


def sign(
    data_dir: DataDirOption,
    file: Path,
    profile: Annotated[str, typer.Option(help="The signing profile to sign with.")],
    bucket: Annotated[str, typer.Option(help="Bucket for the image and the signed result.")] = DEFAULT_BUCKET,
) -> None:
    """Upload FILE, sign it through the signing service, print the signature and where
    the signed result went."""
    with api_errors():
        data = file.read_bytes()
        s3, signer = api_client(data_dir, "s3"), api_client(data_dir, "signer")
        _ensure_bucket(s3, bucket)
        key = f"unsigned/{file.name}"
        version = s3.put_object(Bucket=bucket, Key=key, Body=data)["VersionId"]
        token = str(uuid.uuid4())  # one signing job per invocation; botocore's retries reuse it
        job_id = signer.start_signing_job(
            source={"s3": {"bucketName": bucket, "key": key, "version": version}},
            destination={"s3": {"bucketName": bucket, "prefix": "signed/"}},
            profileName=profile,
            clientRequestToken=token,
        )["jobId"]
        job = signer.describe_signing_job(jobId=job_id)
        if job["status"] != "Succeeded":
            raise MisuseError(
                f"signing job {job_id} {job['status']}: {job.get('statusReason', '')}", code="SigningFailed"
            )
        signed = job["signedObject"]["s3"]
        envelope = s3.get_object(Bucket=signed["bucketName"], Key=signed["key"])["Body"].read()
    signature = json.loads(envelope)["signature"]  # base64 DER, as job documents carry it
    out.print(f"signing job  {job_id}")
    out.print(f"sha256       {hashlib.sha256(data).hexdigest()}")
    out.print(f"signature    {signature}")
    out.print(f"signed       s3://{signed['bucketName']}/{signed['key']}")
    out.print(f"source       s3://{bucket}/{key} (version {version})")


def _ensure_bucket(s3: Any, bucket: str) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def register(app: typer.Typer) -> None:
    app.add_typer(signing_app, name="signing")
    app.command("sign")(sign)
