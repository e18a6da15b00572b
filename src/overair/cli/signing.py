"""`overair signing ...` and `overair sign`: the certificate store and the signing
service, through the same acm/signer API that boto3 and the AWS CLI use."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric import ec
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
    data_dir: DataDirOption = None,
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
def list_certs(json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
               data_dir: DataDirOption = None,
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
    certificate_arn: str,
    reason: Annotated[str, typer.Option(help="Why (e.g. 'key compromise').")] = "",
    data_dir: DataDirOption = None,
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
    name: str,
    certificate_arn: Annotated[str, typer.Option(help="The certificate that signs.")],
    cert_path_on_device: Annotated[
        str, typer.Option(help="Where FreeRTOS devices hold the certificate (the job's certfile).")
    ],
    platform: Annotated[str, typer.Option(help="Signing platform.")] = "AmazonFreeRTOS-Default",
    data_dir: DataDirOption = None,
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
    file: Path,
    profile: Annotated[str, typer.Option(help="The signing profile to sign with.")],
    bucket: Annotated[str, typer.Option(help="Bucket for the image and the signed result.")] = DEFAULT_BUCKET,
    data_dir: DataDirOption = None,
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


def _write_private(path: Path, data: bytes) -> None:
    """A private key: created 0600, never world-readable even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@signing_app.command("create-root")
def create_root(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for root.pem and root.key (new files).")],
    name: Annotated[str, typer.Option(help="The root's common name.")] = "overair code-signing root",
    organization: Annotated[str, typer.Option(help="Its organization.")] = "overair",
    days: Annotated[int, typer.Option(help="Validity in days.", min=1, max=36500)] = 7300,
) -> None:
    """A code-signing root CA (EC P-256, keyCertSign only): devices trust it (agent.toml
    [trust] code_signing_roots), and it issues signers with `create-signer`. Keep
    root.key offline once the signers exist."""
    from overair.server.pki import make_root_ca

    cert, key = out_dir / "root.pem", out_dir / "root.key"
    _refuse_existing(cert, key)
    root = make_root_ca(name, dt.datetime.now(dt.UTC), days=days, org=organization)
    _write_private(key, root.key_pem)
    cert.write_bytes(root.cert_pem)
    out.print(f"[green]wrote[/green] {escape(str(cert))} and {escape(str(key))} (0600); give root.pem to "
              "devices as [trust] code_signing_roots")


@signing_app.command("create-signer")
def create_signer(
    root_cert: Annotated[Path, typer.Option(help="The root's certificate (PEM).", exists=True)],
    root_key: Annotated[Path, typer.Option(help="The root's private key (PEM).", exists=True)],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for signer.pem (and signer.key).")],
    name: Annotated[str, typer.Option(help="The signer's common name.")] = "overair firmware signer",
    days: Annotated[int, typer.Option(help="Validity in days.", min=1, max=3650)] = 825,
    pkcs11_uri: Annotated[str | None, typer.Option(
        help="Certify a key already in an HSM (RFC 7512 URI with its PIN) instead of making one; the key "
             "never leaves the HSM.")] = None,
) -> None:
    """A code-signing certificate issued by the root: digitalSignature key usage and the
    codeSigning extended key usage, as the certificate store requires. Import it with
    `overair signing import-cert --cert signer.pem --key signer.key` (or --pkcs11-uri)."""
    from overair.server.pki import issue_code_signing_cert, load_issued

    cert = out_dir / "signer.pem"
    key = out_dir / "signer.key"
    _refuse_existing(cert, *(() if pkcs11_uri else (key,)))
    with api_errors():
        try:
            root = load_issued(root_cert.read_bytes(), root_key.read_bytes())
        except ValueError as exc:
            raise MisuseError(f"{root_cert} / {root_key} are not a PEM certificate and its EC key: {exc}",
                              code="InvalidRoot") from None
        public = None
        if pkcs11_uri:
            from overair.server.signing.keys import Pkcs11Key, parse_pkcs11_uri

            ref, pin = parse_pkcs11_uri(pkcs11_uri)
            token_key = Pkcs11Key(ref, pin)
            try:
                public = token_key.public_key()
            finally:
                token_key.close()
        if not isinstance(public, ec.EllipticCurvePublicKey | None):
            raise MisuseError("the HSM key is not an EC key (overair signs with ECDSA P-256)",
                              code="InvalidKey")
        signer = issue_code_signing_cert(root, name, dt.datetime.now(dt.UTC), days=days, public_key=public)
    if public is None:
        _write_private(key, signer.key_pem)
    cert.write_bytes(signer.cert_pem)
    written = f"{cert}" if public is not None else f"{cert} and {key} (0600)"
    out.print(f"[green]wrote[/green] {escape(written)}")


def _refuse_existing(*paths: Path) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise typer.BadParameter(f"refusing to overwrite {', '.join(existing)}", param_hint="--out")


def _ensure_bucket(s3: Any, bucket: str) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def register(app: typer.Typer) -> None:
    from overair.cli import rotation

    rotation.register(signing_app)  # trust-list, deployment-key: key rotation
    app.add_typer(signing_app, name="signing")
    app.command("sign")(sign)
