"""Key rotation through the real server, its broker and real agents on both platforms
(linux slots and the simulated MCU with secure boot), with the operator's commands as
docs/security.md gives them ("Rotating roots and deployment keys"):

1. devices are provisioned with the operator's root A (and the server's deployment key);
2. `overair signing deployment-key next`, then a trust list (version 1) naming roots A
   and B and both deployment keys, signed by A and by B, published: agents take it;
3. `overair signing deployment-key promote`: the server signs with the new key only, and
   an update signed under root B (CreateOTAUpdate; its metadata signed by the new key)
   installs on both agents at once (no restart between), and, unchanged, on a
   FreeRTOS-shaped device (which never subscribes to the trust list: its document is
   AWS's); during the overlap an image signed under A still installs too;
4. a second update signed under B, then a list without root A (version 2), signed by B:
   an image signed under A is refused from then on (`UntrustedChain`), and after a cold
   restart the simulated MCU still boots the image signed under B (the held list is
   walked again before secure boot).

The agents here do not require deployment metadata (they verify it when a job carries
it), so that the image signed under A can reach them in a job the server did not check
(CreateJob): only the device's own trust stands between it and running it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from overair.agent.config import load_config
from overair.agent.runtime import Runtime
from overair.core import deployment, trustlist
from overair.core.versions import Version
from overair.server.signing.keys import Pkcs11Key
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import FINISHED, wait_for
from tests.e2e.test_rollout import SIZE, _bundles, _finished, _hand_made_job
from tests.freertos_device import FreeRtosDevice, provision
from tests.pki_helpers import DAY, NOW, Issued, make_ca, make_signer, sign_file
from tests.server_harness import RunningServer, running_server
from tests.softhsm_harness import USER_PIN, SoftHsm

runner = CliRunner()
HOUR = DAY / 24
BUCKET = "firmware"
CERTFILE = "/certs/signer.pem"
LINUX, MCU, FREERTOS = "rot-linux", "rot-mcu", "rot-freertos"


def overair(*args: str) -> str:
    from overair.cli.main import app

    done = runner.invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return str(done.output)


def _write_root(root: Issued, where: Path) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / "root.pem", where / "root.key"
    cert.write_bytes(root.cert_pem)
    key.write_bytes(root.key_pem)
    return cert, key


def _agents(srv: RunningServer, tmp: Path, names: tuple[str, str] = (LINUX, MCU), *,
            require_deployment_metadata: bool = False) -> list[Path]:
    linux, mcu = _bundles(srv, tmp, list(names))
    (mcu / "device-secret.bin").write_bytes(bytes(range(32)))
    for bundle in (linux, mcu):
        config = bundle / "agent.toml"
        text = config.read_text()
        if not require_deployment_metadata:
            text = text.replace("require_deployment_metadata = true", "require_deployment_metadata = false")
        if bundle == mcu:
            text = text.replace(
                '[storage]\ndata_dir = "state"\n',
                '[storage]\ndata_dir = "state"\nplatform = "sim_mcu"\nflash_file = "flash.bin"\n'
                'unique_id = "0123456789abcdef0123456789abcdef"\ndevice_secret_file = "device-secret.bin"\n'
                "image_capacity = 65536\n")
        config.write_text(text)
    return [linux, mcu]


def _signing_profile(srv: RunningServer, name: str, signer: Issued) -> None:
    arn = srv.client("acm").import_certificate(Certificate=signer.cert_pem, PrivateKey=signer.key_pem)
    srv.client("signer").put_signing_profile(
        profileName=name, platformId="AmazonFreeRTOS-Default",
        signingMaterial={"certificateArn": arn["CertificateArn"]}, signingParameters={"certname": CERTFILE})


def _ota(srv: RunningServer, ota_id: str, things: list[str], image: bytes, profile: str) -> dict[str, Any]:
    iot = srv.client("iot")
    version = srv.client("s3").put_object(Bucket=BUCKET, Key=f"{ota_id}.bin", Body=image)["VersionId"]
    iot.create_ota_update(
        otaUpdateId=ota_id, protocols=["MQTT"],
        targets=[iot.describe_thing(thingName=t)["thingArn"] for t in things],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/fw.bin",
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": f"{ota_id}.bin",
                                                "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": profile}}}])
    return dict(wait_for(lambda: (info := iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"])[
        "otaUpdateStatus"] in FINISHED and info, what=f"OTA update {ota_id}"))


def test_o2_f2_roots_and_deployment_key_rotate_on_agents_of_both_platforms_without_reprovisioning(
        srv: RunningServer, tmp_path: Path) -> None:
    data_dir = str(srv.settings.data_dir)
    pki = srv.settings.paths.pki
    # Root B ends within 30 days: `trust-list show` flags it (and the metrics show it).
    root_a, root_b = make_ca("operator root A"), make_ca("operator root B", not_after=NOW + 20 * DAY)
    cert_a, key_a = _write_root(root_a, tmp_path / "holder-a")
    cert_b, key_b = _write_root(root_b, tmp_path / "holder-b")
    # The operator's root A is the server's (and so the bundles') code-signing root.
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root_a.cert_pem)
    signer_a, signer_b = make_signer(root_a, "signer under A"), make_signer(root_b, "signer under B")
    agents = _agents(srv, tmp_path)
    iot = srv.client("iot")
    freertos = FreeRtosDevice(FREERTOS, provision(iot, FREERTOS, tmp_path / FREERTOS,
                                                  srv.settings.paths.fleet_ca_cert.read_bytes()),
                              srv.settings.mqtt_port, Version(1, 0, 0),
                              certfiles={CERTFILE: signer_b.cert_pem})
    both = [LINUX, MCU]

    with Fleet(agents) as fleet:
        assert fleet.wait(lambda s: all(s[t].connected and s[t].version == "1.0.0" for t in both), 30)
        assert {fleet.snapshots()[t].trust_list_version for t in both} == {0}

        # Version 1: roots A and B, the deployment key and the next one; signed by A and B.
        overair("signing", "deployment-key", "next", "--data-dir", data_dir)
        v1 = tmp_path / "trust-1.json"
        overair("signing", "trust-list", "create", "--root", str(cert_a), "--root", str(cert_b),
                "--deployment-keys", str(pki / "deployment.pem"),
                "--deployment-keys", str(pki / "deployment-next.pem"), "--out", str(v1),
                "--data-dir", data_dir)
        overair("signing", "trust-list", "sign", str(v1), "--key", str(key_a))
        overair("signing", "trust-list", "sign", str(v1), "--key", str(key_b))
        assert "published trust list 1" in overair("signing", "trust-list", "publish", str(v1),
                                                   "--data-dir", data_dir)
        assert fleet.wait(lambda s: all(s[t].trust_list_version == 1 for t in both), 30)

        # The next deployment key signs alone from now on; root B's signer signs the update.
        overair("signing", "deployment-key", "promote", "--data-dir", data_dir)
        _signing_profile(srv, "rot_b", signer_b)
        freertos.start()
        try:
            info = _ota(srv, "rot-b", [*both, FREERTOS], make_firmware(Version(1, 1, 0), SIZE, seed="b"),
                        "rot_b")
            assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
            job_b = info["awsIotJobId"]
            statuses = wait_for(_finished(iot, job_b, [*both, FREERTOS]), what="the update signed under B")
            assert statuses == dict.fromkeys([*both, FREERTOS], "SUCCEEDED")
            assert freertos.terminal(job_b).status == "SUCCEEDED"
            assert all(set(doc) == {"afr_ota"} for doc in freertos.log.documents)  # no overair part
        finally:
            freertos.stop()
        assert fleet.wait(lambda s: all(s[t].version == "1.1.0" and not s[t].trial for t in both), 30)
        delivered = iot.get_job_document(jobId=job_b)  # what the server stored: AWS's document
        assert "overair" not in delivered["document"]

        # The overlap: an image signed under A still installs.
        image = make_firmware(Version(1, 2, 0), SIZE, seed="under-a")
        jobs = {t: _hand_made_job(srv, t, image, sign_file(signer_a, image), signer_a, f"rot-a-{t}")
                for t in both}
        for thing, job_id in jobs.items():
            assert wait_for(_finished(iot, job_id, [thing]))[thing] == "SUCCEEDED"
        assert fleet.wait(lambda s: all(s[t].version == "1.2.0" and not s[t].trial for t in both), 30)
        # Before A is retired, every device runs an image signed under B (an image signed
        # under a retired root no longer boots on the simulated MCU: P2).
        info = _ota(srv, "rot-b2", both, make_firmware(Version(1, 3, 0), SIZE, seed="b2"), "rot_b")
        assert wait_for(_finished(iot, info["awsIotJobId"], both)) == dict.fromkeys(both, "SUCCEEDED")
        assert fleet.wait(lambda s: all(s[t].version == "1.3.0" and not s[t].trial for t in both), 30)

        # Version 2 retires root A (and the old deployment key), signed by B.
        v2 = tmp_path / "trust-2.json"
        overair("signing", "trust-list", "create", "--root", str(cert_b),
                "--deployment-keys", str(pki / "deployment.pem"), "--out", str(v2), "--data-dir", data_dir)
        overair("signing", "trust-list", "sign", str(v2), "--key", str(key_b))
        overair("signing", "trust-list", "publish", str(v2), "--data-dir", data_dir)
        assert fleet.wait(lambda s: all(s[t].trust_list_version == 2 for t in both), 30)

        late = make_firmware(Version(1, 4, 0), SIZE, seed="late-a")
        jobs = {t: _hand_made_job(srv, t, late, sign_file(signer_a, late), signer_a, f"rot-late-{t}")
                for t in both}
        for thing, job_id in jobs.items():
            assert wait_for(_finished(iot, job_id, [thing]))[thing] == "FAILED"
            details = iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]["statusDetails"]
            assert details["detailsMap"]["check"] == "UntrustedChain"
        assert {fleet.snapshots()[t].version for t in both} == {"1.3.0"}

    # A cold start: the held chain is walked from the bundle again, before secure boot.
    with Fleet(agents) as again:
        assert again.wait(lambda s: all(s[t].connected for t in both), 30)
        snaps = again.snapshots()
        assert {(snaps[t].version, snaps[t].trust_list_version, snaps[t].error) for t in both} == \
            {("1.3.0", 2, None)}
    shown = [json.loads(line) for line in
             overair("signing", "trust-list", "show", "--json", "--data-dir", data_dir).splitlines()]
    flagged = [(v["version"], [(r["subject"], r["expiresWithin30Days"]) for r in v["roots"]]) for v in shown]
    assert flagged == [
        (1, [("CN=operator root A", False), ("CN=operator root B", True)]),
        (2, [("CN=operator root B", True)])]
    table = overair("signing", "trust-list", "show", "--data-dir", data_dir)
    assert "expires-within-30-days" in table


def _refused(srv: RunningServer, envelope: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as caught:
        srv.client("overair").publish_trust_list(TrustList=json.dumps(envelope))
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    return str(caught.value.response["Error"]["Message"])


def test_f2_server_refuses_to_publish_a_trust_list_a_device_would_refuse(tmp_path: Path) -> None:
    """PublishTrustList applies the device's rule before any device sees a list, and
    the server's own roots follow the published list (a signer under a root it adds is
    imported; one under a root no list names is not)."""
    with running_server(tmp_path / "server") as server:
        paths = server.settings.paths
        root_a, root_b, attacker = make_ca("root A"), make_ca("root B"), make_ca("attacker")
        paths.code_signing_root.write_bytes(paths.code_signing_root.read_bytes() + root_a.cert_pem)
        keys = tuple(deployment.load_public_keys(paths.deployment_keys.read_bytes()))

        def signed(version: int, roots: tuple[Issued, ...], *by: Issued,
                   deployment_keys: tuple[Any, ...] = keys) -> dict[str, Any]:
            envelope = trustlist.unsigned_envelope(
                trustlist.TrustList(version, 1, tuple(r.cert for r in roots), deployment_keys))
            for key_holder in by:
                envelope = trustlist.add_signature(envelope, key_holder.key)
            return envelope

        assert "TrustListBelowThreshold" in _refused(server, signed(1, (attacker,), attacker))
        assert "TrustListNotSignedByNewKeys" in _refused(server, signed(1, (root_b,), root_a))
        other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        assert "leaves out the deployment key" in _refused(
            server, signed(1, (root_a, root_b), root_a, root_b, deployment_keys=(other_key,)))
        with pytest.raises(ClientError):  # root B is no root of the server's yet
            server.client("acm").import_certificate(Certificate=make_signer(root_b).cert_pem,
                                                    PrivateKey=make_signer(root_b).key_pem)
        assert server.client("overair").get_trust_list()["Version"] == 0

        first = signed(1, (root_a, root_b), root_a, root_b)
        assert server.client("overair").publish_trust_list(TrustList=json.dumps(first))["Version"] == 1
        assert "TrustListRollback" in _refused(server, first)
        assert "TrustListVersionSkipped" in _refused(server, signed(3, (root_b,), root_b))
        signer_b = make_signer(root_b)
        server.client("acm").import_certificate(Certificate=signer_b.cert_pem, PrivateKey=signer_b.key_pem)
        answer = server.client("overair").get_trust_list()
        assert answer["Version"] == 1
        assert [s.trust.version for s in trustlist.decode_chain(answer["Chain"].encode())] == [1]

        # The next deployment key is promoted only once a published list names it.
        data_dir = str(server.settings.data_dir)
        overair("signing", "deployment-key", "next", "--data-dir", data_dir)
        from overair.cli.main import app

        refused = runner.invoke(app, ["signing", "deployment-key", "promote", "--data-dir", data_dir])
        assert refused.exit_code == 2
        assert "NextKeyNotPublished" in refused.output


def _certificate_for(public_key: Any, issuer: Issued, name: str) -> bytes:
    """A CA certificate for a key held in a token (issued by `issuer`: the token's key
    cannot sign here). A trust list needs only its public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_f2_a_root_key_in_an_hsm_signs_in_the_key_ceremony(softhsm: SoftHsm, tmp_path: Path) -> None:
    """Two roots, threshold 2: the list is published only once the root held in the HSM
    signed it too (`overair signing trust-list sign --pkcs11-uri`)."""
    label = "trust-root"
    softhsm.generate_ec(label)
    probe = Pkcs11Key(softhsm.ref(label), USER_PIN)
    hsm_public = probe.public_key()
    probe.close()
    uri = (f"pkcs11:token={softhsm.token_label};object={label};type=private"
           f"?module-path={softhsm.module}&pin-value={USER_PIN}")
    with running_server(tmp_path / "server") as server:
        data_dir, pki = str(server.settings.data_dir), server.settings.paths.pki
        root_a = make_ca("root A")
        server.settings.paths.code_signing_root.write_bytes(root_a.cert_pem)
        cert_a, key_a = _write_root(root_a, tmp_path / "holder-a")
        cert_h = tmp_path / "hsm-root.pem"
        cert_h.write_bytes(_certificate_for(hsm_public, root_a, "HSM root"))
        draft = tmp_path / "trust.json"
        overair("signing", "trust-list", "create", "--root", str(cert_a), "--root", str(cert_h),
                "--threshold", "2", "--deployment-keys", str(pki / "deployment.pem"), "--out", str(draft),
                "--data-dir", data_dir)
        overair("signing", "trust-list", "sign", str(draft), "--key", str(key_a))
        with pytest.raises(ClientError) as caught:  # the new root has not signed
            server.client("overair").publish_trust_list(TrustList=draft.read_text())
        assert "TrustListNotSignedByNewKeys" in caught.value.response["Error"]["Message"]
        signed = overair("signing", "trust-list", "sign", str(draft), "--pkcs11-uri", uri)
        assert "2 of its own roots" in signed
        assert "published trust list 1" in overair("signing", "trust-list", "publish", str(draft),
                                                   "--data-dir", data_dir)


def test_p2_image_signed_while_its_signer_was_valid_keeps_booting_after_it_expired_on_both_platforms(
        clocked_srv: RunningServer, tmp_path: Path) -> None:
    """A device installs, through the real server's jobs and streams, an image whose
    signer certificate is valid by the device's clock (half a day back); at its next cold
    start, on the real clock, the signer has expired two hours ago: both platforms still
    boot the image (no fall-back to the factory image: P2 has no time bomb). The server
    itself refuses an expired signer (CreateOTAUpdate, ImportCertificate), so the job is
    made with CreateJob and the device checks the signature alone. (A server of its own:
    the module's other server sends the trust lists of the rotation test to its agents.)"""
    srv = clocked_srv
    things = ("expiry-linux", "expiry-mcu")
    root = make_ca("expiry root", not_before=NOW - 400 * DAY, not_after=NOW + 3650 * DAY)
    signer = make_signer(root, "signer that expired", not_before=NOW - 20 * HOUR, not_after=NOW - 2 * HOUR)
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)
    agents = _agents(srv, tmp_path, things)
    image = make_firmware(Version(1, 1, 0), SIZE, seed="expiry")
    runtimes = [Runtime(load_config(bundle), clock=lambda: time.time() - 12 * 3600) for bundle in agents]
    for runtime in runtimes:
        runtime.start()
    try:
        assert all(r.wait(lambda s: s.connected and s.version == "1.0.0", 30) for r in runtimes)
        signature = sign_file(signer, image)
        jobs = {t: _hand_made_job(srv, t, image, signature, signer, f"expiry-{t}") for t in things}
        for thing, job_id in jobs.items():
            assert wait_for(_finished(srv.client("iot"), job_id, [thing]))[thing] == "SUCCEEDED"
        assert all(r.wait(lambda s: s.version == "1.1.0" and not s.trial, 30) for r in runtimes)
    finally:
        for runtime in runtimes:
            runtime.stop()
    with Fleet(agents) as fleet:  # the real clock
        assert fleet.wait(lambda s: all(s[t].connected for t in things), 30)
        snaps = fleet.snapshots()
    assert {(snaps[t].version, snaps[t].slot, snaps[t].error) for t in things} == {("1.1.0", "b", None)}
