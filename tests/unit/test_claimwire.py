"""The device provisioning MQTT API's pure parts (core/claimwire.py): the topics the
access plugin moves claim requests to, the answer control message, the ownership token
(threat N4: unforgeable, bound to one certificate, expiring)."""

from __future__ import annotations

import pytest

from overair.core import claimwire
from overair.core.claimwire import ClaimError, Operation
from overair.server.provisioning.device import _Bucket

KEY = b"k" * 32
CERT = "ab" * 32


def test_moved_request_topics_name_the_connection_client_and_operation() -> None:
    prefix = claimwire.REQUEST_PREFIX
    keys = claimwire.parse_request_topic(f"{prefix}7/dev-1/$aws/certificates/create/json")
    assert keys is not None
    assert (keys.connection, keys.client_id, keys.operation, keys.fmt) == (7, "dev-1", Operation.CREATE_KEYS,
                                                                           "json")
    register = claimwire.parse_request_topic(f"{prefix}8/d/$aws/provisioning-templates/t_1/provision/cbor")
    assert register is not None
    assert (register.operation, register.template, register.fmt) == (Operation.REGISTER_THING, "t_1", "cbor")
    for bad in (f"{prefix}x/d/$aws/certificates/create/json", f"{prefix}1/d/$aws/certificates/create/xml",
                f"{prefix}1/d/$aws/certificates/delete/json", f"{prefix}1/d d/$aws/certificates/create/json",
                f"{prefix}1/d/$aws/provisioning-templates/a b/provision/json",
                "$aws/certificates/create/json"):
        assert claimwire.parse_request_topic(bad) is None, bad


def test_the_answer_names_the_connection_and_the_answer_topic() -> None:
    request = claimwire.parse_request_topic(f"{claimwire.REQUEST_PREFIX}3/dev/$aws/certificates/create/json")
    assert request is not None
    answer = claimwire.answer(request, False, claimwire.rejection(claimwire.invalid_payload("bad")))
    assert answer == (b"3 dev $aws/certificates/create/json/rejected\n"
                      b'{"statusCode":400,"errorCode":"InvalidPayload","errorMessage":"bad"}')


def test_n4_tokens_verify_only_unaltered_unexpired_and_under_the_key() -> None:
    token = claimwire.issue_token(KEY, CERT, 1000)
    assert claimwire.verify_token(KEY, token, 999.0) == CERT
    version, cert, expiry, mac = token.split(".")
    for bad in (f"{version}.{'cd' * 32}.{expiry}.{mac}", f"{version}.{cert}.2000.{mac}",
                claimwire.issue_token(b"x" * 32, CERT, 1000), token + "=", ""):
        with pytest.raises(ClaimError):
            claimwire.verify_token(KEY, bad, 999.0)
    with pytest.raises(ClaimError, match="expired"):
        claimwire.verify_token(KEY, token, 1000.0)


def test_registration_takes_the_certificate_from_the_token_never_from_parameters() -> None:
    with pytest.raises(ClaimError):
        claimwire.registration_of({"certificateOwnershipToken": "t",
                                   "parameters": {claimwire.CERTIFICATE_ID_PARAMETER: CERT}})
    assert claimwire.registration_of({"certificateOwnershipToken": "t", "parameters": {"a": "b"}}) == (
        "t", {"a": "b"})


def test_a_claim_certificate_is_granted_its_requests_and_only_subscribe_to_their_answers() -> None:
    grants = claimwire.claim_grants(["factory", "not a name"])
    assert ("write", "$aws/provisioning-templates/factory/provision/json") in grants
    assert ("subscribe", "$aws/certificates/create-from-csr/cbor/+") in grants
    assert {access for access, _ in grants} == {"write", "subscribe"}
    assert not [topic for _, topic in grants if "not a name" in topic]


def test_the_fleet_wide_claim_budget_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = _Bucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one more after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst
