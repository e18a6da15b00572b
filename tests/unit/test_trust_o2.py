"""O2 (stolen signing key): `DeviceTrust.admit_revocations` and `DeviceTrust.policy`
(agent/trust.py). A signed list is admitted only if it is newer than the held one; the
same list signed again (the server re-signs it whenever it connects to the broker) is
unchanged, not a replay; an older list is refused, so a replay never un-revokes. The
list format itself is tested in test_revocation.py; through a broker in
tests/integration/test_agent_revocation.py."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.machine.state import FileSpec
from overair.agent.trust import DeviceTrust, RevocationVerdict
from overair.core.revocation import RevocationList, sign_list
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.pki_helpers import Issued, make_ca, make_signer, sign_file

ROOT = make_ca("o2 code-signing root")
SIGNER = make_signer(ROOT)
LIST_SIGNER = make_ca("o2 revocation signer")
TRUST = DeviceTrust((ROOT.cert,), revocation_signer=LIST_SIGNER.cert)


def envelope(sequence: int, *revoked: Issued, issued_at: int = 1, signer: Issued = LIST_SIGNER) -> bytes:
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    listed = RevocationList(sequence, issued_at, frozenset(r.cert.serial_number for r in revoked))
    return sign_list(listed, signer.key)


def test_o2_a_newer_list_is_admitted_and_revokes_its_serials() -> None:
    outcome = TRUST.admit_revocations(envelope(1, SIGNER))
    assert outcome.verdict is RevocationVerdict.ADMITTED
    assert outcome.trust.revocation_sequence == 1
    assert SIGNER.cert.serial_number in outcome.trust.policy.revoked_serials
    assert TRUST.revocations is None  # frozen: the next state is a new object


def test_o2_the_held_list_signed_again_is_unchanged_not_a_replay() -> None:
    held = TRUST.admit_revocations(envelope(0, issued_at=100)).trust
    again = held.admit_revocations(envelope(0, issued_at=200))  # the server restarted
    assert again.verdict is RevocationVerdict.UNCHANGED
    assert "replay" not in again.message
    assert "refused" not in again.message
    assert again.trust is held


@pytest.mark.parametrize("replayed", [0, 1])
def test_o2_an_older_list_is_refused_and_revokes_nothing_less(replayed: int) -> None:
    held = TRUST.admit_revocations(envelope(2, SIGNER)).trust
    outcome = held.admit_revocations(envelope(replayed))
    assert outcome.verdict is RevocationVerdict.REFUSED
    assert "older" in outcome.message
    assert outcome.trust is held
    assert SIGNER.cert.serial_number in outcome.trust.policy.revoked_serials


def test_o2_a_list_of_the_held_sequence_with_other_serials_is_refused() -> None:
    held = TRUST.admit_revocations(envelope(1, SIGNER)).trust
    outcome = held.admit_revocations(envelope(1, make_signer(ROOT, "other")))
    assert outcome.verdict is RevocationVerdict.REFUSED
    assert outcome.trust is held


def test_o2_a_list_signed_by_another_key_is_refused() -> None:
    outcome = TRUST.admit_revocations(envelope(5, SIGNER, signer=make_ca("rogue list signer")))
    assert outcome.verdict is RevocationVerdict.REFUSED
    assert outcome.trust is TRUST


def test_o2_without_a_revocation_signer_lists_are_ignored() -> None:
    trust = DeviceTrust((ROOT.cert,))
    assert trust.admit_revocations(envelope(1, SIGNER)).verdict is RevocationVerdict.IGNORED


def test_o2_the_held_file_proves_itself_again_at_start() -> None:
    assert TRUST.with_held_revocations(envelope(3, SIGNER)).trust.revocation_sequence == 3
    planted = envelope(3, SIGNER, signer=make_ca("planted"))
    outcome = TRUST.with_held_revocations(planted)
    assert (outcome.verdict, outcome.trust.revocations) == (RevocationVerdict.REFUSED, None)


def test_o2_configured_and_signed_serials_both_refuse_a_signer() -> None:
    image = make_firmware(Version(1, 1, 0), 3000, seed="o2")
    spec = FileSpec("s", 0, len(image), sign_file(SIGNER, image), "ecdsa-sha256-p256", "", (SIGNER.cert_der,))
    now = dt.datetime.now(dt.UTC)
    assert TRUST.admit_image(image, spec, now).ok
    by_list = TRUST.admit_revocations(envelope(1, SIGNER)).trust
    by_config = DeviceTrust((ROOT.cert,), frozenset({SIGNER.cert.serial_number}))
    for trust in (by_list, by_config):
        assert trust.admit_image(image, spec, now).check == "CertificateRevoked"
