"""Fuzz target: provisioning templates and bulk registration input lines
(core/provtemplate.py). Only `TemplateError` may escape `parse_template`, `parse_line`
and `plan`; whatever they accept evaluates to names and values that are strings."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core.provtemplate import TemplateError, parse_line, parse_template, plan
from tests.fuzz.hostile import hostile_bytes, hostile_text

PARAMETERS = ["ThingName", "CSR", "Group", "Serial"]
name = st.one_of(st.sampled_from(PARAMETERS), hostile_text)
SUBS = ["${ThingName}-x", "${Nope}", "${", "a${Serial}b"]
value: st.SearchStrategy[Any] = st.recursive(
    st.one_of(hostile_text, name.map(lambda n: {"Ref": n}),
              st.sampled_from(SUBS).map(lambda t: {"Fn::Sub": t})),
    lambda children: st.one_of(
        st.tuples(hostile_text, st.lists(children, max_size=3)).map(lambda p: {"Fn::Join": [p[0], p[1]]}),
        st.tuples(hostile_text, st.dictionaries(name, children, max_size=2))
        .map(lambda p: {"Fn::Sub": list(p)}),
        st.lists(children, max_size=3),
        st.dictionaries(hostile_text, children, max_size=3),
        st.sampled_from([{"Fn::Select": [0, []]}, {"Ref": 3}, {"Fn::Join": "x"}])),
    max_leaves=12)
resource = st.fixed_dictionaries(
    {"Type": st.sampled_from(["AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy", "X"])},
    optional={"Properties": st.dictionaries(
        st.sampled_from(["ThingName", "AttributePayload", "ThingGroups", "ThingTypeName",
                         "CertificateSigningRequest", "CertificateId", "Status", "BillingGroup"]),
        value, max_size=4),
        "OverrideSettings": st.just({})})
template = st.fixed_dictionaries(
    {"Resources": st.dictionaries(hostile_text, resource, max_size=3)},
    optional={"Parameters": st.dictionaries(name, st.fixed_dictionaries(
        {"Type": st.sampled_from(["String", "Number"])}, optional={"Default": hostile_text}), max_size=4),
        "Mappings": st.just({})})
values = st.dictionaries(name, hostile_text, max_size=5)


@given(st.one_of(template.map(json.dumps), hostile_text), values)
def test_fuzz_templates_raise_only_template_errors(body: str, line_values: dict[str, str]) -> None:
    try:
        parsed = parse_template(body)
        registration = plan(parsed, line_values)
    except TemplateError:
        return
    for text in (registration.thing_name, *registration.groups, *registration.attributes.values()):
        assert isinstance(text, str)
    assert registration.certificate_status in ("ACTIVE", "INACTIVE")


@given(st.one_of(values.map(lambda v: json.dumps(v).encode()), hostile_bytes))
def test_fuzz_input_lines_raise_only_template_errors(line: bytes) -> None:
    try:
        parsed = parse_line(line)
    except TemplateError:
        return
    assert all(isinstance(v, str) for v in parsed.values())
