"""Key rotation (issue 14, "Key lifecycle"): `DeviceTrust.admit_trust_chain` (agent/trust.py)
and the TUF root rotation rule in core/trustlist.py `admit_next`. A device provisioned
with root A (version 0: its bundle) takes a trust list that adds root B and a new
deployment key (version 1, signed by A and by B), then one that retires A (version 2).

Each adversarial test names the check it proves and fails when that check is removed:
the version rule (`TrustListRollback`/`TrustListVersionSkipped`), the threshold of the
keys trusted now (`TrustListBelowThreshold`), the threshold of the list's own keys
(`TrustListNotSignedByNewKeys`), and the roots and deployment keys that hold
(`DeviceTrust.code_signing_roots`, `DeviceTrust.deployment_keys`). Through the real server
and agents on both platforms: tests/e2e/test_key_rotation.py."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.machine import commands as c
from overair.agent.machine.events import VerifyResult
from overair.agent.machine.state import FileSpec, Phase
from overair.agent.trust import DeviceTrust, Refusal, TrustListVerdict, admit_deployment
from overair.core import deployment, trustlist
from overair.core.jobdoc import parse_job_document
from overair.core.trustlist import TrustList
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.pki_helpers import NOW, Issued, make_ca, make_signer, sign_file
from tests.unit.test_agent_machine import SETTINGS, deliver, of, ota_doc, run, statuses
from tests.unit.test_agent_machine import V2 as IMAGE_VERSION
from tests.unit.test_trust_f1_f2 import DIGEST, offered, signed_doc, stated

ROOT_A, ROOT_B, ROOT_C = make_ca("root A"), make_ca("root B"), make_ca("root C")
ATTACKER = make_ca("attacker root")
DEPLOY_OLD, DEPLOY_NEW = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
BUNDLE = DeviceTrust((ROOT_A.cert,), bundle_deployment_keys=(DEPLOY_OLD.public_key(),))
IMAGE = make_firmware(Version(1, 1, 0), 3000, seed="rotation")
EPOCH = 1_000_000.0  # the clock of test_trust_f1_f2's metadata


def listed(version: int, *roots: Issued, keys: tuple[ec.EllipticCurvePrivateKey, ...] = (DEPLOY_OLD,),
           threshold: int = 1) -> TrustList:
    return TrustList(version, threshold, tuple(r.cert for r in roots), tuple(k.public_key() for k in keys))


def envelope(trust: TrustList, *signers: Issued) -> dict[str, Any]:
    signed: dict[str, Any] = trustlist.unsigned_envelope(trust)
    for signer in signers:
        signed = trustlist.add_signature(signed, signer.key)
    return signed


def chain(*envelopes: dict[str, Any]) -> bytes:
    return trustlist.encode_chain(envelopes)


# The rotation an operator runs: add B and the new deployment key, then retire A.
V1 = envelope(listed(1, ROOT_A, ROOT_B, keys=(DEPLOY_OLD, DEPLOY_NEW)), ROOT_A, ROOT_B)
V2 = envelope(listed(2, ROOT_B, keys=(DEPLOY_NEW,)), ROOT_B)


def admitted(trust: DeviceTrust, message: bytes) -> DeviceTrust:
    outcome = trust.admit_trust_chain(message)
    assert outcome.verdict is TrustListVerdict.ADMITTED, outcome.message
    return outcome.trust


def refused(trust: DeviceTrust, message: bytes, code: str) -> None:
    outcome = trust.admit_trust_chain(message)
    assert outcome.verdict is TrustListVerdict.REFUSED, outcome.message
    assert code in outcome.message
    assert outcome.trust is trust  # nothing changes


def image_check(trust: DeviceTrust, signer: Issued) -> str:
    spec = FileSpec(stream="s", file_id=0, size=len(IMAGE), signature=sign_file(signer, IMAGE),
                    signature_key="sig-sha256-ecdsa", certfile="", signer_chain=(signer.cert_der,))
    result = trust.admit_image(IMAGE, spec, NOW)
    return "ok" if result.ok else result.check


def metadata_check(trust: DeviceTrust, key: ec.EllipticCurvePrivateKey) -> str:
    """What `admit_deployment` says of metadata signed by `key`, with the deployment keys
    the runtime hands the machine from this trust."""
    doc = ota_doc()
    doc["overair"]["deployment"] = deployment.sign(stated(), key)
    settings = replace(SETTINGS, deployment_keys=trust.deployment_keys, require_deployment=True)
    result = admit_deployment(doc["overair"]["deployment"], settings, held_sequence=0, job_id="job-1",
                              doc=parse_job_document(doc), url=None, now=EPOCH)
    return result.check if isinstance(result, Refusal) else "ok"


# --- the rotation as it should go --------------------------------------------------------------


def test_o2_device_with_root_a_trusts_root_b_and_the_new_deployment_key_after_rotation() -> None:
    assert image_check(BUNDLE, make_signer(ROOT_B)) == "UntrustedChain"  # before: B is unknown
    assert metadata_check(BUNDLE, DEPLOY_NEW) == "UnknownDeploymentKey"
    trust = admitted(BUNDLE, chain(V1))
    assert trust.trust_list_version == 1
    assert image_check(trust, make_signer(ROOT_B)) == "ok"
    assert image_check(trust, make_signer(ROOT_A)) == "ok"  # the overlap: both roots
    assert metadata_check(trust, DEPLOY_NEW) == metadata_check(trust, DEPLOY_OLD) == "ok"


def test_o2_rotated_out_root_is_refused_after_retirement() -> None:
    trust = admitted(BUNDLE, chain(V1, V2))  # a device that missed version 1 walks it first
    assert trust.trust_list_version == 2
    assert image_check(trust, make_signer(ROOT_A)) == "UntrustedChain"
    assert image_check(trust, make_signer(ROOT_B)) == "ok"


def test_f2_rotated_out_deployment_key_is_refused_after_retirement() -> None:
    trust = admitted(BUNDLE, chain(V1, V2))
    assert metadata_check(trust, DEPLOY_OLD) == "UnknownDeploymentKey"
    assert metadata_check(trust, DEPLOY_NEW) == "ok"


def test_o2_retired_root_stops_booting_at_once() -> None:
    """A root left out without an overlap (revoked): its images stop booting (P2)."""

    @dataclass(frozen=True)
    class Installed:
        sha256: bytes
        signature: bytes | None
        signer_chain: tuple[bytes, ...]

    signer = make_signer(ROOT_A)
    image = Installed(hashlib.sha256(IMAGE).digest(), sign_file(signer, IMAGE), (signer.cert_der,))
    assert BUNDLE.admit_boot(image)
    revoked = envelope(listed(1, ROOT_B, keys=(DEPLOY_NEW,)), ROOT_A, ROOT_B)
    assert not admitted(BUNDLE, chain(revoked)).admit_boot(image)


def test_o2_the_held_list_again_is_unchanged_and_quiet() -> None:
    """The retained chain arrives at every reconnect: not a refusal, not a replay."""
    trust = admitted(BUNDLE, chain(V1))
    outcome = trust.admit_trust_chain(chain(V1))
    assert outcome.verdict is TrustListVerdict.UNCHANGED
    assert outcome.trust is trust


def test_o2_the_held_chain_is_walked_again_from_the_bundle_at_start() -> None:
    trust = admitted(BUNDLE, chain(V1, V2))
    again = replace(trust, trust_list=None).with_held_trust_chain(chain(V1, V2))
    assert again.trust.trust_list_version == 2
    planted = envelope(listed(1, ATTACKER), ATTACKER)  # a file written on the device
    outcome = BUNDLE.with_held_trust_chain(chain(planted))
    assert outcome.verdict is TrustListVerdict.REFUSED
    assert outcome.trust.trust_list is None


# --- adversarial ---------------------------------------------------------------------------------


def test_f2_trust_list_signed_by_an_unknown_key_is_refused() -> None:
    refused(BUNDLE, chain(envelope(listed(1, ATTACKER), ATTACKER)), "TrustListBelowThreshold")


def test_f2_trust_list_signed_below_the_threshold_is_refused() -> None:
    two_of_two = DeviceTrust((ROOT_A.cert, ROOT_C.cert), trust_list_threshold=2)
    one = envelope(listed(1, ROOT_A, ROOT_C, ROOT_B), ROOT_A, ROOT_B)
    refused(two_of_two, chain(one), "TrustListBelowThreshold")
    # One key signing twice is still one key.
    doubled = dict(one, signatures=one["signatures"] + [one["signatures"][0]])
    refused(two_of_two, chain(doubled), "TrustListBelowThreshold")
    both = trustlist.add_signature(one, ROOT_C.key)
    assert admitted(two_of_two, chain(both)).trust_list_version == 1  # the key ceremony's result


def test_f2_trust_list_not_signed_by_the_new_key_is_refused() -> None:
    """TUF: the new keys must sign too (they prove they are held before they are trusted)."""
    refused(BUNDLE, chain(envelope(listed(1, ROOT_B), ROOT_A)), "TrustListNotSignedByNewKeys")
    raised = envelope(listed(1, ROOT_A, ROOT_B, threshold=2), ROOT_A)
    refused(BUNDLE, chain(raised), "TrustListNotSignedByNewKeys")


def test_f1_trust_list_version_rollback_is_refused() -> None:
    """Version 1 (A and B, signed by both) replayed at a device holding version 2 would
    bring the retired root A back: B's signature satisfies version 2's keys, so only the
    version rule stops it."""
    trust = admitted(BUNDLE, chain(V1, V2))
    refused(trust, chain(V1), "TrustListRollback")
    assert image_check(trust, make_signer(ROOT_A)) == "UntrustedChain"


def test_f1_trust_list_of_the_held_version_with_other_content_is_refused() -> None:
    trust = admitted(BUNDLE, chain(V1))
    other = envelope(listed(1, ROOT_A, ROOT_B, ROOT_C), ROOT_A, ROOT_B, ROOT_C)
    refused(trust, chain(other), "TrustListRollback")


def test_f1_trust_list_that_skips_a_version_is_refused() -> None:
    refused(BUNDLE, chain(envelope(listed(2, ROOT_A, ROOT_B), ROOT_A, ROOT_B)), "TrustListVersionSkipped")


def test_f2_a_bad_version_after_good_ones_keeps_the_good_ones() -> None:
    forged = envelope(listed(3, ATTACKER), ATTACKER)
    outcome = BUNDLE.admit_trust_chain(chain(V1, V2, forged))
    assert outcome.verdict is TrustListVerdict.ADMITTED
    assert outcome.trust.trust_list_version == 2
    assert "TrustListBelowThreshold" in outcome.message


def test_f2_malformed_chains_are_refused_without_raising() -> None:
    for message in (b"", b"{}", b'{"lists": []}', b'{"lists": [{}]}', b"\xff" * 10,
                    chain(dict(V1, payload="bm90IGpzb24=")),
                    chain(dict(V1, signatures=[{"keyid": "x", "sig": ""}]))):
        outcome = BUNDLE.admit_trust_chain(message)
        assert outcome.verdict is TrustListVerdict.REFUSED
        assert outcome.trust is BUNDLE



def test_o2_a_retired_deployment_key_stops_the_job_in_progress_at_once() -> None:
    """The runtime hands the machine the keys of each admitted list at once; a job
    admitted (during the overlap of version 1) under a key retired since (version 2) is
    not activated. Signed by the old and the next key (the server's overlap), the same
    job goes on."""
    overlap = admitted(BUNDLE, chain(V1)).deployment_keys
    retired = admitted(BUNDLE, chain(V1, V2)).deployment_keys
    for signers, activated in (((DEPLOY_OLD,), False), ((DEPLOY_OLD, DEPLOY_NEW), True)):
        doc = signed_doc()
        doc["overair"]["deployment"] = deployment.sign(stated(), *signers)
        state, _ = offered(doc, settings=replace(SETTINGS, deployment_keys=overlap, require_deployment=True))
        state, _ = deliver(state, list(range(10)), EPOCH)
        assert state.phase is Phase.VERIFYING
        state = replace(state, settings=replace(state.settings, deployment_keys=retired))
        _, commands = run(state, [VerifyResult(True, IMAGE_VERSION, sha256=DIGEST)], EPOCH)
        assert bool(of(commands, c.ActivateAndReboot)) is activated
        if not activated:
            (status, details, _), = statuses(commands)
            assert (status, details["check"]) == ("FAILED", "UnknownDeploymentKey")
