"""The certificate store (acm) and the signing service (signer) through boto3 against a
running server, the `overair signing` CLI, and the revocation of a code-signing
certificate. Threat ids in test names: N2 mis-signed update, O2 stolen signing key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec
from overair.agent.trust import DeviceTrust
from overair.cli.main import app as overair_cli
from overair.core import codesign
from overair.core.versions import Version
from overair.server.signing.keys import Pkcs11Key
from overair.sim.firmware import make_firmware
from tests.pki_helpers import DAY, NOW, Issued, SignerKey, make_ca, make_signer, sign_file
from tests.server_harness import RunningServer, running_server
from tests.softhsm_harness import USER_PIN, SoftHsm


def admit_image(data: bytes, spec: FileSpec, trust: codesign.TrustPolicy, now: dt.datetime) -> VerifyResult:
    """N2 as the agent decides it (agent/trust.py), for a plain code-signing policy."""
    return DeviceTrust.of(trust).admit_image(data, spec, now)

BUCKET = "firmware"


@pytest.fixture(scope="module")
def operator_root(srv: RunningServer) -> Issued:
    """The operator's own code-signing root, configured as trusted on the server."""
    root = make_ca("operator code-signing root")
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)
    return root


def _import(
    srv: RunningServer, signer: Issued, *, key_pem: bytes | None = None, chain: bytes | None = None
) -> str:
    params: dict[str, Any] = {"Certificate": signer.cert_pem, "PrivateKey": key_pem or signer.key_pem}
    if chain:
        params["CertificateChain"] = chain
    return str(srv.client("acm").import_certificate(**params)["CertificateArn"])


def _refusal(srv: RunningServer, signer: Issued, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        _import(srv, signer, **kwargs)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    return str(caught.value.response["Error"]["Message"])


# --- import checks (N2: only certificates a device would accept get in) -----------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no-code-signing-eku", "MissingCodeSigningUsage"),
        ("no-digital-signature", "MissingDigitalSignature"),
        ("expired", "CertificateExpired"),
        ("not-yet-valid", "CertificateNotYetValid"),
        ("untrusted-chain", "UntrustedChain"),
        ("rsa-1024", "KeyTooSmall"),
        ("ecdsa-p521", "UnsupportedKey"),
        ("self-signed", "SelfSignedNotAllowed"),
    ],
)
def test_n2_import_refuses_a_certificate_a_device_would_not_accept(
    srv: RunningServer, operator_root: Issued, case: str, code: str
) -> None:
    signer = {
        "no-code-signing-eku": lambda: make_signer(operator_root, eku=False),
        "no-digital-signature": lambda: make_signer(operator_root, digital_signature=False),
        "expired": lambda: make_signer(operator_root, not_before=NOW - 30 * DAY, not_after=NOW - DAY),
        "not-yet-valid": lambda: make_signer(operator_root, not_before=NOW + DAY, not_after=NOW + 30 * DAY),
        "untrusted-chain": lambda: make_signer(make_ca("a root nobody configured")),
        "rsa-1024": lambda: make_signer(operator_root, key=rsa.generate_private_key(65537, 1024)),
        "ecdsa-p521": lambda: make_signer(operator_root, key=ec.generate_private_key(ec.SECP521R1())),
        "self-signed": _self_signed_signer,
    }[case]()
    message = _refusal(srv, signer)
    assert message.startswith(f"[{code}]"), message
    if code == "UntrustedChain":  # the operator is told where the trusted roots live
        assert "pki/code-signing-root.pem" in message


def _self_signed_signer() -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "self-signed signer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def test_n2_import_refuses_a_key_that_does_not_match(srv: RunningServer, operator_root: Issued) -> None:
    signer, other = make_signer(operator_root), make_signer(operator_root)
    assert _refusal(srv, signer, key_pem=other.key_pem).startswith("[KeyMismatch]")


def test_import_refuses_unreadable_input_without_echoing_it(
    srv: RunningServer, operator_root: Issued
) -> None:
    signer = make_signer(operator_root)
    garbage_key = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    message = _refusal(srv, signer, key_pem=garbage_key)
    assert message.startswith("[PrivateKeyParseError]")
    assert "c2VjcmV0" not in message
    with pytest.raises(ClientError) as caught:
        srv.client("acm").import_certificate(Certificate=b"not a certificate", PrivateKey=signer.key_pem)
    assert "[CertificateParseError]" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize("key_kind", ["ecdsa-p256", "ecdsa-p384", "rsa-2048"])
def test_import_accepts_good_certificates_and_describes_them(
    srv: RunningServer, operator_root: Issued, key_kind: str
) -> None:
    makers: dict[str, Callable[[], SignerKey]] = {
        "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "rsa-2048": lambda: rsa.generate_private_key(65537, 2048),
    }
    key = makers[key_kind]()
    signer = make_signer(operator_root, cn=f"signer {key_kind}", key=key)
    arn = _import(srv, signer)
    acm = srv.client("acm")
    detail = acm.describe_certificate(CertificateArn=arn)["Certificate"]
    assert detail["Status"] == "ISSUED"
    assert detail["Serial"] == format(signer.cert.serial_number, "x")
    assert (
        detail["KeyAlgorithm"]
        == {"ecdsa-p256": "EC_prime256v1", "ecdsa-p384": "EC_secp384r1", "rsa-2048": "RSA_2048"}[key_kind]
    )
    assert detail["NotAfter"] > dt.datetime.now(dt.UTC)
    assert acm.get_certificate(CertificateArn=arn)["Certificate"].encode() == signer.cert_pem
    listed = {c["CertificateArn"] for c in acm.list_certificates()["CertificateSummaryList"]}
    assert arn in listed


def test_listing_flags_development_and_soon_expiring_certificates(
    srv: RunningServer, operator_root: Issued
) -> None:
    acm = srv.client("acm")
    soon = _import(srv, make_signer(operator_root, not_after=NOW + 10 * DAY))
    later = _import(srv, make_signer(operator_root, not_after=NOW + 300 * DAY))

    def flags(arn: str) -> set[str]:
        return {t["Key"] for t in acm.list_tags_for_certificate(CertificateArn=arn)["Tags"]}

    assert "overair:expires-within-30-days" in flags(soon)
    assert flags(later) == set()
    development = [
        c["CertificateArn"]
        for c in acm.list_certificates()["CertificateSummaryList"]
        if "overair:development-only" in flags(c["CertificateArn"])
    ]
    assert len(development) == 1  # the signer `overair init` made


# --- signing ----------------------------------------------------------------------------


def _profile(srv: RunningServer, name: str, arn: str, platform: str = "AmazonFreeRTOS-Default") -> None:
    srv.client("signer").put_signing_profile(
        profileName=name,
        platformId=platform,
        signingMaterial={"certificateArn": arn},
        signingParameters={"certname": "/certs/signer.pem"},
    )


def _sign(srv: RunningServer, profile: str, data: bytes, token: str) -> dict[str, Any]:
    s3, signer = srv.client("s3"), srv.client("signer")
    version = s3.put_object(Bucket=BUCKET, Key=f"in/{token}.bin", Body=data)["VersionId"]
    job_id = signer.start_signing_job(
        source={"s3": {"bucketName": BUCKET, "key": f"in/{token}.bin", "version": version}},
        destination={"s3": {"bucketName": BUCKET, "prefix": "signed/"}},
        profileName=profile,
        clientRequestToken=token,
    )["jobId"]
    return dict(signer.describe_signing_job(jobId=job_id))


def _signature_of(srv: RunningServer, job: dict[str, Any]) -> tuple[bytes, list[x509.Certificate]]:
    signed = job["signedObject"]["s3"]
    envelope = json.loads(
        srv.client("s3").get_object(Bucket=signed["bucketName"], Key=signed["key"])["Body"].read()
    )
    return (
        base64.b64decode(envelope["signature"]),
        codesign.load_pem_certificates(envelope["certificateChain"].encode()),
    )


def _openssl_verifies(tmp_path: Path, cert: x509.Certificate, data: bytes, signature: bytes) -> bool:
    (tmp_path / "pub.pem").write_bytes(
        cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "image.bin").write_bytes(data)
    (tmp_path / "sig.der").write_bytes(signature)
    result = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(tmp_path / "pub.pem"),
            "-signature",
            str(tmp_path / "sig.der"),
            str(tmp_path / "image.bin"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and "Verified OK" in result.stdout


@pytest.mark.parametrize(
    ("key_kind", "platform"), [("ecdsa", "AmazonFreeRTOS-Default"), ("rsa", "AmazonFreeRTOS-RSA")]
)
def test_signing_job_signature_verifies_with_openssl_and_with_the_agent(
    srv: RunningServer, operator_root: Issued, tmp_path: Path, key_kind: str, platform: str
) -> None:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_kind == "ecdsa"
        else rsa.generate_private_key(65537, 2048)
    )
    signer = make_signer(operator_root, cn=f"job signer {key_kind}", key=key)
    _profile(srv, f"p_{key_kind}", _import(srv, signer), platform)
    data = make_firmware(Version(4, 0, 0), 20_000, seed=key_kind)
    job = _sign(srv, f"p_{key_kind}", data, f"sign-{key_kind}")
    assert job["status"] == "Succeeded", job.get("statusReason")
    assert job["platformId"] == platform
    signature, chain = _signature_of(srv, job)
    assert chain[0].serial_number == signer.cert.serial_number
    assert _openssl_verifies(tmp_path, chain[0], data, signature)
    assert not _openssl_verifies(tmp_path, chain[0], data + b"!", signature)
    spec = FileSpec(
        stream="s",
        file_id=0,
        size=len(data),
        signature=signature,
        signature_key="sig-sha256-ecdsa" if key_kind == "ecdsa" else "sig-sha256-rsa",
        certfile="/certs/signer.pem",
        signer_chain=tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
    )
    trust = codesign.TrustPolicy((operator_root.cert,))
    result = admit_image(data, spec, trust, dt.datetime.now(dt.UTC))
    assert result.ok, result.message
    assert result.version == Version(4, 0, 0)


def test_client_request_token_makes_start_signing_job_idempotent(
    srv: RunningServer, operator_root: Issued
) -> None:
    _profile(srv, "p_idem", _import(srv, make_signer(operator_root)))
    first = _sign(srv, "p_idem", b"image one", "idem-token")
    signer = srv.client("signer")
    again = signer.start_signing_job(
        source={"s3": {"bucketName": BUCKET, "key": "in/idem-token.bin",
                       "version": first["source"]["s3"]["version"]}},
        destination={"s3": {"bucketName": BUCKET, "prefix": "signed/"}},
        profileName="p_idem",
        clientRequestToken="idem-token",
    )
    assert again["jobId"] == first["jobId"]
    jobs = [j for j in signer.list_signing_jobs()["jobs"] if j["profileName"] == "p_idem"]
    assert len(jobs) == 1


def test_signing_job_with_a_missing_source_ends_failed_with_a_reason(
    srv: RunningServer, operator_root: Issued
) -> None:
    _profile(srv, "p_missing", _import(srv, make_signer(operator_root)))
    signer = srv.client("signer")
    job_id = signer.start_signing_job(
        source={"s3": {"bucketName": BUCKET, "key": "does/not/exist.bin", "version": "nope"}},
        destination={"s3": {"bucketName": BUCKET, "prefix": "signed/"}},
        profileName="p_missing",
        clientRequestToken="missing-source",
    )["jobId"]
    job = signer.describe_signing_job(jobId=job_id)
    assert job["status"] == "Failed"
    assert "version" in job["statusReason"].lower() or "not exist" in job["statusReason"].lower()


def test_platforms_and_profiles_are_listed(srv: RunningServer, operator_root: Issued) -> None:
    signer = srv.client("signer")
    platforms = {p["platformId"]: p for p in signer.list_signing_platforms()["platforms"]}
    assert {"AmazonFreeRTOS-Default", "AmazonFreeRTOS-RSA"} <= platforms.keys()
    _profile(srv, "p_listed", _import(srv, make_signer(operator_root)))
    profile = signer.get_signing_profile(profileName="p_listed")
    assert profile["signingParameters"]["certname"] == "/certs/signer.pem"
    assert profile["status"] == "Active"
    signer.cancel_signing_profile(profileName="p_listed")
    names = {p["profileName"] for p in signer.list_signing_profiles()["profiles"]}
    assert "p_listed" not in names
    assert "p_listed" in {
        p["profileName"] for p in signer.list_signing_profiles(includeCanceled=True)["profiles"]
    }
    with pytest.raises(ClientError):
        _sign(srv, "p_listed", b"data", "canceled-profile")


def test_a_profile_refuses_a_certificate_of_the_wrong_key_type(
    srv: RunningServer, operator_root: Issued
) -> None:
    arn = _import(srv, make_signer(operator_root))  # ECDSA P-256
    with pytest.raises(ClientError) as caught:
        _profile(srv, "p_wrong_type", arn, "AmazonFreeRTOS-RSA")
    assert caught.value.response["Error"]["Code"] == "ValidationException"


# --- the three options of CreateOTAUpdate, and revocation (O2) ---------------------------


def _ota(srv: RunningServer, ota_id: str, code_signing: dict[str, Any], key: str,
         **extra: Any) -> dict[str, Any]:
    iot, s3 = srv.client("iot"), srv.client("s3")
    thing = iot.create_thing(thingName=f"t-{ota_id}")["thingArn"]
    version = s3.head_object(Bucket=BUCKET, Key=key)["VersionId"]
    iot.create_ota_update(
        **extra,
        otaUpdateId=ota_id,
        targets=[thing],
        protocols=["MQTT"],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[
            {
                "fileName": "/fw.bin",
                "codeSigning": code_signing,
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": key, "version": version}},
            }
        ],
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info: dict[str, Any] = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
        if info["otaUpdateStatus"] in ("CREATE_COMPLETE", "CREATE_FAILED"):
            return info
        time.sleep(0.05)
    raise AssertionError("OTA update did not finish")


def test_o2_revoked_certificate_signs_nothing_and_its_signatures_are_refused(
    srv: RunningServer, operator_root: Issued
) -> None:
    signer = make_signer(operator_root, cn="soon revoked signer")
    arn = _import(srv, signer)
    _profile(srv, "p_revoked", arn)
    data = make_firmware(Version(5, 0, 0), 10_000, seed="revoked")
    job = _sign(srv, "p_revoked", data, "before-revocation")
    assert job["status"] == "Succeeded"
    key = "in/before-revocation.bin"
    # All three options work before the revocation ...
    assert (
        _ota(srv, "o2-before-job", {"awsSignerJobId": job["jobId"]}, key)["otaUpdateStatus"]
        == "CREATE_COMPLETE"
    )
    custom = {
        "customCodeSigning": {
            "signature": {"inlineDocument": sign_file(signer, data)},
            "certificateChain": {
                "certificateName": "/certs/s.pem",
                "inlineDocument": signer.cert_pem.decode(),
            },
            "hashAlgorithm": "SHA256",
            "signatureAlgorithm": "ECDSA",
        }
    }
    assert _ota(srv, "o2-before-custom", custom, key)["otaUpdateStatus"] == "CREATE_COMPLETE"

    answer = srv.client("overair").revoke_code_signing_certificate(
        CertificateArn=arn, Reason="key compromise"
    )
    assert answer["RevocationSequence"] >= 1
    assert srv.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]["Status"] == "REVOKED"
    # ... and none after it.
    for ota_id, code_signing in (
        ("o2-after-job", {"awsSignerJobId": job["jobId"]}),
        ("o2-after-custom", custom),
        ("o2-after-new", {"startSigningJobParameter": {"signingProfileName": "p_revoked"}}),
    ):
        info = _ota(srv, ota_id, code_signing, key)
        assert info["otaUpdateStatus"] == "CREATE_FAILED", ota_id
        assert "revoked" in info["errorInfo"]["message"].lower() or "REVOKED" in info["errorInfo"]["message"]
        assert f"AFR_OTA-{ota_id}" not in {j["jobId"] for j in srv.client("iot").list_jobs()["jobs"]}
    after = _sign(srv, "p_revoked", data, "after-revocation")
    assert after["status"] == "Failed"
    assert "REVOKED" in after["statusReason"]


def _custom_signing(signer: Issued, data: bytes) -> dict[str, Any]:
    return {"customCodeSigning": {
        "signature": {"inlineDocument": sign_file(signer, data)},
        "certificateChain": {"certificateName": "/certs/s.pem", "inlineDocument": signer.cert_pem.decode()},
        "hashAlgorithm": "SHA256", "signatureAlgorithm": "ECDSA"}}


def test_create_ota_update_warns_when_the_signer_expires_before_the_rollout_ends(
    srv: RunningServer, operator_root: Issued
) -> None:
    data = make_firmware(Version(5, 1, 0), 10_000, seed="expiry")
    key = "in/expiry.bin"
    srv.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)
    end = {"additionalParameters": {"overair:endTime": (NOW + 60 * DAY).strftime("%Y-%m-%dT%H:%M")}}
    cases = [  # (ota id, signer's notAfter, extra request fields, warned)
        ("exp-soon", NOW + 10 * DAY, {}, True),  # no endTime: the 30-day horizon
        ("exp-later", NOW + 300 * DAY, {}, False),
        ("exp-before-end", NOW + 45 * DAY, end, True),
        ("exp-after-end", NOW + 90 * DAY, end, False),
    ]
    for ota_id, not_after, extra, warned in cases:
        signer = make_signer(operator_root, cn=f"signer {ota_id}", not_after=not_after)
        info = _ota(srv, ota_id, _custom_signing(signer, data), key, **extra)
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", (ota_id, info.get("errorInfo"))
        if warned:
            assert info["errorInfo"]["code"] == "SignerExpiresBeforeRolloutEnd", ota_id
            assert "CertificateExpired" in info["errorInfo"]["message"]
        else:
            assert "errorInfo" not in info or not info["errorInfo"].get("code"), (ota_id, info["errorInfo"])


def test_revoke_signature_and_profile_refuse_those_signatures(
    srv: RunningServer, operator_root: Issued
) -> None:
    _profile(srv, "p_sig_revoked", _import(srv, make_signer(operator_root)))
    data = make_firmware(Version(6, 0, 0), 10_000, seed="sig")
    job = _sign(srv, "p_sig_revoked", data, "sig-revoked")
    srv.client("signer").revoke_signature(jobId=job["jobId"], reason="built from the wrong branch")
    assert srv.client("signer").describe_signing_job(jobId=job["jobId"])["revocationRecord"]
    info = _ota(srv, "sig-revoked", {"awsSignerJobId": job["jobId"]}, "in/sig-revoked.bin")
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert "revoked" in info["errorInfo"]["message"]


# --- keys never leak ------------------------------------------------------------------


def test_o2_database_dump_and_logs_hold_no_private_key_material(
    srv: RunningServer, operator_root: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signer = make_signer(operator_root, cn="leak check signer")
    arn = _import(srv, signer)
    _profile(srv, "p_leak", arn)
    _sign(srv, "p_leak", b"leak check image", "leak-check")
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    der = signer.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    scalar = signer.key.private_numbers().private_value.to_bytes(32, "big")
    needles = [
        signer.key_pem,
        der,
        scalar,
        base64.b64encode(der),
        scalar.hex().encode(),
        b"BEGIN PRIVATE KEY",
        b"BEGIN EC PRIVATE KEY",
    ]
    connection = sqlite3.connect(srv.settings.paths.database)
    dump = "\n".join(connection.iterdump()).encode()
    raw = srv.settings.paths.database.read_bytes()
    connection.close()
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    for needle in needles:
        assert needle not in dump
        assert needle not in raw
        assert needle not in logs


# --- the CLI ---------------------------------------------------------------------------


def test_cli_imports_creates_a_profile_signs_and_revokes(
    srv: RunningServer, operator_root: Issued, tmp_path: Path
) -> None:
    signer = make_signer(operator_root, cn="cli signer")
    signer.write(tmp_path / "signer.pem", tmp_path / "signer.key")
    data_dir = str(srv.settings.paths.root)
    runner = CliRunner(env={"COLUMNS": "250"})

    def run(*args: str) -> str:
        result = runner.invoke(overair_cli, [*args, "--data-dir", data_dir])
        assert result.exit_code == 0, result.output
        return result.output

    arn = run(
        "signing",
        "import-cert",
        "--cert",
        str(tmp_path / "signer.pem"),
        "--key",
        str(tmp_path / "signer.key"),
    ).strip()
    assert arn.startswith("arn:aws:acm:")
    run(
        "signing",
        "profile",
        "create",
        "p_cli",
        "--certificate-arn",
        arn,
        "--cert-path-on-device",
        "/certs/cli.pem",
    )
    image = tmp_path / "app.bin"
    image.write_bytes(make_firmware(Version(7, 0, 0), 5000, seed="cli"))
    printed = run("sign", str(image), "--profile", "p_cli")
    signature = base64.b64decode(printed.split("signature", 1)[1].split()[0])
    codesign.verify_digest(signer.cert, codesign.sha256(image.read_bytes()), signature)
    assert "s3://overair-signing/signed/" in printed
    listing = run("signing", "list")
    assert "development-only" in listing
    # Listed by the full ARN that `signing profile create --certificate-arn` takes.
    listed = [json.loads(line) for line in run("signing", "list", "--json").splitlines() if line]
    assert arn in {row["certificateArn"] for row in listed}
    revoked = run("signing", "revoke", arn, "--reason", "retired")
    assert "revoked" in revoked
    refused = runner.invoke(overair_cli, ["sign", str(image), "--profile", "p_cli", "--data-dir", data_dir])
    assert refused.exit_code == 2
    assert "REVOKED" in refused.output


# --- PKCS#11: a signing key that lives in an HSM -----------------------------------------

def _token_signer_cert(root: Issued, public_key: Any) -> bytes:
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "HSM firmware signer")]))
            .issuer_name(root.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 90 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .sign(root.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_o2_signing_key_in_an_hsm_signs_through_the_service_and_never_leaves_it(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    label = "service-signer"
    softhsm.generate_ec(label)
    uri = (f"pkcs11:token={softhsm.token_label};object={label};type=private"
           f"?module-path={softhsm.module}&pin-value={USER_PIN}")
    probe = Pkcs11Key(softhsm.ref(label), USER_PIN)
    public_key = probe.public_key()
    probe.close()
    root = make_ca("HSM operator root")
    cert_pem = _token_signer_cert(root, public_key)
    allow = f'pkcs11_modules = ["{softhsm.module}"]'
    with running_server(tmp_path / "server", settings_toml=allow) as hsm_srv:
        roots = hsm_srv.settings.paths.code_signing_root
        roots.write_bytes(roots.read_bytes() + root.cert_pem)
        s3 = hsm_srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        arn = str(hsm_srv.client("acm").import_certificate(Certificate=cert_pem,
                                                           PrivateKey=uri.encode())["CertificateArn"])
        _profile(hsm_srv, "p_hsm", arn)
        data = make_firmware(Version(8, 0, 0), 30_000, seed="hsm")
        job = _sign(hsm_srv, "p_hsm", data, "hsm-job")
        assert job["status"] == "Succeeded", job.get("statusReason")
        signature, chain = _signature_of(hsm_srv, job)
        assert _openssl_verifies(tmp_path, chain[0], data, signature)
        stored = sqlite3.connect(hsm_srv.settings.paths.database)
        dump = "\n".join(stored.iterdump())
        (sealed_pin,) = stored.execute("SELECT key_sealed FROM signing_certificates WHERE arn = ?",
                                       (arn,)).fetchone()
        stored.close()
        assert USER_PIN.encode() not in sealed_pin  # the PIN is sealed, never stored as is
        assert "pin-value" not in dump


def test_pkcs11_module_outside_the_allow_list_is_never_loaded(srv: RunningServer,
                                                              operator_root: Issued) -> None:
    signer = make_signer(operator_root)
    uri = b"pkcs11:token=t;object=k;type=private?module-path=/tmp/evil.so&pin-value=1"
    assert _refusal(srv, signer, key_pem=uri).startswith("[Pkcs11ModuleNotAllowed]")


def test_delete_certificate_refuses_one_in_use_or_revoked(srv: RunningServer, operator_root: Issued) -> None:
    acm = srv.client("acm")
    unused = _import(srv, make_signer(operator_root, cn="unused signer"))
    acm.delete_certificate(CertificateArn=unused)
    with pytest.raises(ClientError) as gone:
        acm.describe_certificate(CertificateArn=unused)
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    used = _import(srv, make_signer(operator_root, cn="used signer"))
    _profile(srv, "p_in_use", used)
    with pytest.raises(ClientError) as in_use:
        acm.delete_certificate(CertificateArn=used)
    assert in_use.value.response["Error"]["Code"] == "ResourceInUseException"
    srv.client("signer").cancel_signing_profile(profileName="p_in_use")
    srv.client("overair").revoke_code_signing_certificate(CertificateArn=used, Reason="retired")
    with pytest.raises(ClientError) as revoked:
        acm.delete_certificate(CertificateArn=used)  # it must stay on the revocation list
    assert revoked.value.response["Error"]["Code"] == "ResourceInUseException"
