"""Provisioning templates and bulk registration input lines (core/provtemplate.py), and
what the registration operations ask of IAM."""

from __future__ import annotations

import json
from typing import Any

import pytest

from overair.core.limits import DEFAULT_LIMITS
from overair.core.provtemplate import TemplateError, parse_line, parse_template, plan
from overair.server.iam.actions import Check, needs
from tests.unit.test_iam_actions import ALICE, ARNS, _arn, _checks

PARAMETERS = {"ThingName": {"Type": "String"}, "Serial": {"Type": "String"},
              "Site": {"Type": "String", "Default": "WA"}, "Note": {"Type": "String"},
              "CSR": {"Type": "String"}}


def _template(thing: dict[str, Any], cert: dict[str, Any] | None = None, **extra: Any) -> str:
    resources: dict[str, Any] = {"thing": {"Type": "AWS::IoT::Thing", "Properties": thing}}
    if cert is not None:
        resources["certificate"] = {"Type": "AWS::IoT::Certificate", "Properties": cert}
    return json.dumps({"Parameters": PARAMETERS, "Resources": resources, **extra})


def test_values_follow_refs_joins_subs_and_defaults() -> None:
    template = parse_template(_template(
        {"ThingName": {"Fn::Sub": "dev-${Serial}"},
         "AttributePayload": {"site": {"Ref": "Site"}, "note": {"Ref": "Note"},
                              "lot": {"Fn::Join": ["-", ["lot", {"Ref": "Serial"}, "a"]]},
                              "where": {"Fn::Sub": ["${Site}/${Room}", {"Room": {"Ref": "Serial"}}]}},
         "ThingGroups": ["fleet", {"Ref": "Site"}, {"Ref": "Note"}, "fleet"], "ThingTypeName": "bulb"},
        {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "Inactive"}))
    line = plan(template, {"Serial": "42", "CSR": "pem"})
    assert line.thing_name == "dev-42"
    # Note has no value and no default: left out, as AWS documents.
    assert line.attributes == {"site": "WA", "lot": "lot-42-a", "where": "WA/42"}
    assert line.groups == ("fleet", "WA")
    assert (line.thing_type, line.csr_pem, line.certificate_status) == ("bulb", "pem", "INACTIVE")
    assert (template.thing_resource, template.certificate_resource) == ("thing", "certificate")


@pytest.mark.parametrize(("values", "why"), [
    ({}, "ThingName has no value"),
    ({"ThingName": ""}, "ThingName has no value"),
    ({"ThingName": "t"}, "CertificateSigningRequest has no value"),
])
def test_a_required_value_missing_fails_the_line(values: dict[str, str], why: str) -> None:
    template = parse_template(_template({"ThingName": {"Ref": "ThingName"}},
                                        {"CertificateSigningRequest": {"Ref": "CSR"}}))
    with pytest.raises(TemplateError, match=why):
        plan(template, values)


def test_a_join_of_a_value_that_is_missing_fails_the_line() -> None:
    template = parse_template(_template({"ThingName": {"Fn::Join": ["-", ["a", {"Ref": "Note"}]]}}))
    with pytest.raises(TemplateError, match="no value"):
        plan(template, {})


@pytest.mark.parametrize(("body", "why"), [
    (json.dumps({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}},
                               "p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "x"}}}}),
     "AWS::IoT::Policy"),
    (json.dumps({"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"},
                                     "OverrideSettings": {"ThingGroups": "MERGE"}}}}), "OverrideSettings"),
    (_template({"ThingName": "t", "BillingGroup": "b"}), "BillingGroup"),
    (_template({"ThingName": "t"}, {"CertificatePem": "x"}), "CertificatePem"),
    (_template({"ThingName": "t"}, {"CertificateId": "a", "CertificateSigningRequest": "b"}), "exactly one"),
    (_template({"ThingName": {"Ref": "Nope"}}), "no declared parameter"),
    (_template({"ThingName": {"Fn::Sub": "${Nope}"}}), "no declared parameter"),
    (_template({"ThingName": {"Fn::Select": [0, ["a"]]}}), "Fn::Select is not supported"),
    (_template({"ThingName": "t"}, Mappings={}), "Mappings"),
    (json.dumps({"Resources": {}}), "must declare Resources"),
    (json.dumps({"Resources": {"c": {"Type": "AWS::IoT::Certificate",
                                     "Properties": {"CertificateId": "x"}}}}), "AWS::IoT::Thing"),
    ('{"Resources": {"t": {"Type": "AWS::IoT::Thing"}}, "Resources": {}}', "duplicate"),
    ("[1]", "JSON object"),
    ("{", "template"),
])
def test_what_overair_does_not_serve_is_refused_by_name(body: str, why: str) -> None:
    with pytest.raises(TemplateError, match=why):
        parse_template(body)


def test_templates_are_bounded_in_size_and_depth() -> None:
    padded = _template({"ThingName": "t" + " " * DEFAULT_LIMITS.max_provisioning_template_bytes})
    with pytest.raises(TemplateError, match="bytes"):
        parse_template(padded)
    name: Any = "t"
    for _ in range(DEFAULT_LIMITS.max_provisioning_template_depth):
        name = {"Fn::Join": ["", [name]]}
    with pytest.raises(TemplateError, match="nested deeper"):
        parse_template(_template({"ThingName": name}))


@pytest.mark.parametrize(("line", "why"), [
    (b'{"ThingName": 3}', "string values"),
    (b'["ThingName"]', "JSON object"),
    (b'{"ThingName": {"x": "y"}}', "nested deeper"),
    (b'{"ThingName": "a"', "JSON"),
    (b'{"CSR": "' + b"x" * DEFAULT_LIMITS.max_registration_line_bytes + b'"}', "bytes"),
])
def test_input_lines_are_objects_of_strings_within_bounds(line: bytes, why: str) -> None:
    with pytest.raises(TemplateError, match=why):
        parse_line(line)


@pytest.mark.parametrize("operation", ["StartThingRegistrationTask", "DescribeThingRegistrationTask",
                                       "ListThingRegistrationTasks", "ListThingRegistrationTaskReports",
                                       "StopThingRegistrationTask", "RegisterThing"])
def test_each_registration_operation_needs_its_own_iot_action(operation: str) -> None:
    assert _checks("iot", operation, taskId="t") == [(f"iot:{operation}", "*")]


def test_o2_a_registration_task_passes_its_role_to_iot() -> None:
    role = _arn("iam", "role/bulk")
    checks = needs("iot", "StartThingRegistrationTask", {"roleArn": role, "templateBody": "{}"}, ARNS,
                   ALICE).checks
    assert checks[-1] == Check("iam:PassRole", role, {"iam:PassedToService": "iot.amazonaws.com"})
