"""Fuzz target: the device provisioning MQTT API's parsers (core/claimwire.py): the topic
the access plugin moves a claim request to, the request payload (JSON and CBOR), a
RegisterThing's members, the ownership token, and fleet provisioning templates
(core/provtemplate.py with `fleet=True`). Only `ClaimError` / `TemplateError` escape;
no token but one issued under the key verifies."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.core import claimwire
from overair.core.claimwire import ClaimError, ClaimRequest, Operation
from overair.core.provtemplate import TemplateError, parse_template
from tests.fuzz.hostile import hostile_bytes, hostile_text

KEY = b"k" * 32
CERT = "ab" * 32
original = st.sampled_from(["$aws/certificates/create/json", "$aws/certificates/create-from-csr/cbor",
                            "$aws/provisioning-templates/t/provision/json", "$aws/x", ""])
topic = st.one_of(
    st.tuples(st.one_of(st.integers(0, 2**64).map(str), hostile_text), hostile_text,
              st.one_of(original, hostile_text)).map(
        lambda p: f"{claimwire.REQUEST_PREFIX}{p[0]}/{p[1]}/{p[2]}"),
    hostile_text)
json_value: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), hostile_text),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(hostile_text, c, max_size=3)), max_leaves=8)
request_doc = st.dictionaries(st.sampled_from(["certificateOwnershipToken", "parameters",
                                               "certificateSigningRequest", "x"]), json_value, max_size=3)


@given(topic)
def test_fuzz_request_topics_parse_or_are_ignored(text: str) -> None:
    parsed = claimwire.parse_request_topic(text)
    if parsed is not None:
        assert parsed.fmt in claimwire.FORMATS
        assert parsed.topic.startswith("$aws/")
        assert (parsed.template is not None) == (parsed.operation is Operation.REGISTER_THING)


@given(st.sampled_from(["json", "cbor"]),
       st.one_of(request_doc.map(lambda d: json.dumps(d).encode()), request_doc.map(cbor2.dumps),
                 hostile_bytes))
def test_fuzz_payloads_raise_only_claim_errors(fmt: str, payload: bytes) -> None:
    request = ClaimRequest(1, "c", f"$aws/provisioning-templates/t/provision/{fmt}", Operation.REGISTER_THING,
                           fmt, "t")
    try:
        doc = claimwire.decode_payload(request, payload)
        token, parameters = claimwire.registration_of(doc)
    except ClaimError:
        return
    assert isinstance(token, str)
    assert all(isinstance(v, str) for v in parameters.values())
    assert claimwire.CERTIFICATE_ID_PARAMETER not in parameters


@given(st.one_of(hostile_text,
                 st.builds(lambda e, m: f"v1.{CERT}.{e}.{m}", st.integers(0, 10**13), hostile_text)))
def test_fuzz_tokens_never_verify_unless_issued(token: str) -> None:
    with pytest.raises(ClaimError) as refused:
        claimwire.verify_token(KEY, token, 0.0)
    assert refused.value.code == "InvalidCertificateOwnershipToken"


SECTIONS = ["Parameters", "Resources", "DeviceConfiguration", "Mappings"]


@given(st.one_of(st.dictionaries(st.sampled_from(SECTIONS), json_value, max_size=4).map(json.dumps),
                 hostile_text))
def test_fuzz_fleet_templates_raise_only_template_errors(body: str) -> None:
    try:
        template = parse_template(body, fleet=True)
    except TemplateError:
        return
    assert all(isinstance(v, str) for v in template.device_configuration.values())
