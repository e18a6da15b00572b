"""Provisioning templates as bulk registration and RegisterThing use them, and the
lines of a bulk registration input file. Pure: text in, a `Template` or a `Plan` out,
`TemplateError` for anything refused.

The subset (AWS IoT developer guide, "Provisioning templates"):

- `Parameters`: name -> {"Type": "String", "Default"?: string}.
- `Resources`: logical name -> {"Type", "Properties"}: one `AWS::IoT::Thing`
  (`ThingName`, `AttributePayload`, `ThingTypeName`, `ThingGroups`) and at most one
  `AWS::IoT::Certificate` (`CertificateSigningRequest` or `CertificateId`; `Status`
  ACTIVE or INACTIVE, default ACTIVE, any case: AWS's own examples write "Active").
- Values: strings, `{"Ref": parameter}`, `{"Fn::Join": [delimiter, [values]]}` and
  `{"Fn::Sub": "text ${Parameter}"}` (or `[text, {name: value}]`).

Refused by name, so a template never means less here than it says: `AWS::IoT::Policy`
(overair serves no IoT policies: a device may use the topics of the things its
certificate is attached to, docs/compatibility.md), `OverrideSettings`, `BillingGroup`,
`PackageVersions`, `CertificatePem`/`CACertificatePem` (one fleet CA issues every
device certificate), and fleet provisioning's `Mappings`/`DeviceConfiguration`.

AWS: "If a parameter is omitted from the dictionary, the default value is used. If no
default value is specified, the parameter is not replaced with a value" (developer
guide, "Single thing provisioning"): such a value is left out (an attribute or a group
is not set); where it is required (the thing name, the CSR) the line fails.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overair.core import wirejson
from overair.core.errors import PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits

THING = "AWS::IoT::Thing"
CERTIFICATE = "AWS::IoT::Certificate"
POLICY = "AWS::IoT::Policy"
_THING_PROPERTIES = frozenset({"ThingName", "AttributePayload", "ThingTypeName", "ThingGroups"})
_CERT_PROPERTIES = frozenset({"CertificateSigningRequest", "CertificateId", "Status"})
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class TemplateError(PeerInputError):
    """A template or an input line that cannot be used; `code` is the AWS error code."""

    code = "InvalidRequestException"


class _Absent:
    """A parameter with no value and no default: the value is left out."""


ABSENT = _Absent()


@dataclass(frozen=True, slots=True)
class Template:
    parameters: Mapping[str, str | None]  # name -> default
    thing_resource: str  # logical names: RegisterThing's resourceArns keys
    thing: Mapping[str, Any]  # properties, values not yet evaluated
    certificate_resource: str | None
    certificate: Mapping[str, Any]
    # Fleet provisioning's DeviceConfiguration: returned as is to the device RegisterThing
    # provisions (developer guide, "Provisioning templates": "key-value pairs").
    device_configuration: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one line (or one RegisterThing call) registers."""

    thing_name: str
    attributes: dict[str, str]
    thing_type: str | None
    groups: tuple[str, ...]
    csr_pem: str | None
    certificate_id: str | None
    certificate_status: str  # ACTIVE or INACTIVE


def parse_template(body: str | bytes, limits: Limits = DEFAULT_LIMITS, *, fleet: bool = False) -> Template:
    """`fleet`: a fleet provisioning template (server/provisioning/), which may also carry
    a DeviceConfiguration of string values."""
    data = body.encode() if isinstance(body, str) else body
    if len(data) > limits.max_provisioning_template_bytes:
        raise TemplateError(f"the template is {len(data)} bytes; at most "
                            f"{limits.max_provisioning_template_bytes} are allowed")
    try:
        doc = wirejson.loads(data, limits=limits, max_depth=limits.max_provisioning_template_depth,
                             what="the template", reject_duplicate_keys=True)
    except PeerInputError as exc:
        raise TemplateError(exc.message) from None
    if not isinstance(doc, dict):
        raise TemplateError("the template must be a JSON object")
    sections = ("Parameters", "Resources", "DeviceConfiguration") if fleet else ("Parameters", "Resources")
    for key in doc:
        if key not in sections:
            raise TemplateError(f"template section {key!r} is not supported "
                                f"({', '.join(sections)} are)")
    parameters = _parameters(doc.get("Parameters", {}))
    resources = doc.get("Resources")
    if not isinstance(resources, dict) or not resources:
        raise TemplateError("the template must declare Resources")
    thing: tuple[str, dict[str, Any]] | None = None
    cert: tuple[str, dict[str, Any]] | None = None
    for logical, resource in resources.items():
        kind, properties = _resource(logical, resource)
        if kind == THING:
            if thing is not None:
                raise TemplateError("the template declares more than one AWS::IoT::Thing")
            _check_properties(logical, properties, _THING_PROPERTIES, required="ThingName")
            thing = (logical, properties)
        else:
            if cert is not None:
                raise TemplateError("the template declares more than one AWS::IoT::Certificate")
            _check_properties(logical, properties, _CERT_PROPERTIES)
            if ("CertificateSigningRequest" in properties) == ("CertificateId" in properties):
                raise TemplateError(f"certificate {logical!r} must have exactly one of "
                                    "CertificateSigningRequest and CertificateId")
            cert = (logical, properties)
    if thing is None:
        raise TemplateError("the template must declare an AWS::IoT::Thing")
    for _, properties in (thing, cert or ("", {})):
        for value in properties.values():
            _check_value(value, parameters)
    groups = thing[1].get("ThingGroups")
    if groups is not None and not isinstance(groups, list):
        raise TemplateError("ThingGroups must be a list")
    payload = thing[1].get("AttributePayload")
    if payload is not None and not isinstance(payload, dict):
        raise TemplateError("AttributePayload must be an object of attribute names and values")
    configuration = doc.get("DeviceConfiguration", {})
    if not isinstance(configuration, dict) or not all(isinstance(v, str) for v in configuration.values()):
        raise TemplateError("DeviceConfiguration must be an object of names and string values")
    return Template(parameters, thing[0], thing[1], cert[0] if cert else None, cert[1] if cert else {},
                    configuration)


def _parameters(section: object) -> dict[str, str | None]:
    if not isinstance(section, dict):
        raise TemplateError("Parameters must be an object")
    out: dict[str, str | None] = {}
    for name, spec in section.items():
        if not isinstance(spec, dict) or spec.get("Type") != "String":
            raise TemplateError(f"parameter {name!r} must be declared as {{\"Type\": \"String\"}}")
        extra = set(spec) - {"Type", "Default"}
        if extra:
            raise TemplateError(f"parameter {name!r} has unsupported keys {sorted(extra)}")
        default = spec.get("Default")
        if default is not None and not isinstance(default, str):
            raise TemplateError(f"the default of parameter {name!r} must be a string")
        out[name] = default
    return out


def _resource(logical: str, resource: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(resource, dict):
        raise TemplateError(f"resource {logical!r} must be an object")
    kind = resource.get("Type")
    if kind == POLICY:
        raise TemplateError(f"resource {logical!r}: AWS::IoT::Policy is not supported: overair serves no "
                            "AWS IoT policies; a device may use the topics of the things its certificate "
                            "is attached to (docs/compatibility.md). Remove the policy resource")
    if kind not in (THING, CERTIFICATE):
        raise TemplateError(f"resource {logical!r} has type {kind!r}; AWS::IoT::Thing and "
                            "AWS::IoT::Certificate are supported")
    extra = set(resource) - {"Type", "Properties"}
    if extra:
        raise TemplateError(f"resource {logical!r}: {sorted(extra)} not supported (a thing that already "
                            "exists fails its line)")
    properties = resource.get("Properties", {})
    if not isinstance(properties, dict):
        raise TemplateError(f"the Properties of resource {logical!r} must be an object")
    return str(kind), properties


def _check_properties(logical: str, properties: dict[str, Any], allowed: frozenset[str],
                      required: str | None = None) -> None:
    extra = sorted(set(properties) - allowed)
    if extra:
        raise TemplateError(f"resource {logical!r}: properties {extra} are not supported "
                            f"(supported: {sorted(allowed)})")
    if required is not None and required not in properties:
        raise TemplateError(f"resource {logical!r} must set {required}")


def _check_value(value: object, parameters: Mapping[str, str | None]) -> None:
    """Every Ref names a declared parameter and every function is well formed."""
    if isinstance(value, str):
        return
    if isinstance(value, list):
        for item in value:
            _check_value(item, parameters)
        return
    if not isinstance(value, dict):
        raise TemplateError(f"unsupported template value {value!r:.60}")
    if len(value) != 1:
        # An AttributePayload: attribute name -> value.
        for item in value.values():
            _check_value(item, parameters)
        return
    ((key, arg),) = value.items()
    if key == "Ref":
        if not isinstance(arg, str) or arg not in parameters:
            raise TemplateError(f"Ref {arg!r:.60} names no declared parameter")
    elif key == "Fn::Join":
        if (not isinstance(arg, list) or len(arg) != 2 or not isinstance(arg[0], str)
                or not isinstance(arg[1], list)):
            raise TemplateError("Fn::Join takes [delimiter, [values]]")
        _check_value(arg[1], parameters)
    elif key == "Fn::Sub":
        text, names = _sub_parts(arg)
        for name in _SUB_VARIABLE.findall(text):
            if name not in names and name not in parameters:
                raise TemplateError(f"Fn::Sub names ${{{name}}}, which is no declared parameter")
        for item in names.values():
            _check_value(item, parameters)
    elif key.startswith("Fn::"):
        raise TemplateError(f"{key} is not supported (Ref, Fn::Join and Fn::Sub are)")
    else:
        _check_value(arg, parameters)  # an AttributePayload with one attribute


def _sub_parts(arg: object) -> tuple[str, dict[str, Any]]:
    if isinstance(arg, str):
        return arg, {}
    if isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and isinstance(arg[1], dict):
        return arg[0], arg[1]
    raise TemplateError("Fn::Sub takes a string or [string, {name: value}]")


def parse_line(line: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
    """One line of the input file: a JSON object of parameter values (strings)."""
    if len(line) > limits.max_registration_line_bytes:
        raise TemplateError(f"the line is {len(line)} bytes; at most {limits.max_registration_line_bytes} "
                            "are allowed")
    try:
        values = wirejson.loads(line, limits=limits, max_depth=1, what="the line")
    except PeerInputError as exc:
        raise TemplateError(exc.message) from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise TemplateError("the line must be a JSON object of parameter names and string values")
    return values


def plan(template: Template, values: Mapping[str, str]) -> Plan:
    """Evaluate the template with one device's parameter values."""
    env = {name: values.get(name, default) for name, default in template.parameters.items()}
    thing = template.thing
    name = _required(_evaluate(thing["ThingName"], env), "ThingName")
    attributes: dict[str, str] = {}
    payload = thing.get("AttributePayload") or {}
    for key, expr in payload.items():
        value = _evaluate(expr, env)
        if not isinstance(value, _Absent):
            attributes[key] = value
    thing_type = _evaluate(thing["ThingTypeName"], env) if "ThingTypeName" in thing else ABSENT
    groups = tuple(dict.fromkeys(g for g in (_evaluate(e, env) for e in thing.get("ThingGroups") or ())
                                 if not isinstance(g, _Absent)))
    cert = template.certificate
    csr = cert_id = None
    status = "ACTIVE"
    if template.certificate_resource is not None:
        if "CertificateSigningRequest" in cert:
            csr = _required(_evaluate(cert["CertificateSigningRequest"], env), "CertificateSigningRequest")
        else:
            cert_id = _required(_evaluate(cert["CertificateId"], env), "CertificateId")
        if "Status" in cert:
            given = _evaluate(cert["Status"], env)
            status = "ACTIVE" if isinstance(given, _Absent) else given.upper()
            if status not in ("ACTIVE", "INACTIVE"):
                raise TemplateError(f"certificate Status must be ACTIVE or INACTIVE, not {given!r:.40}")
    return Plan(name, attributes, None if isinstance(thing_type, _Absent) else thing_type, groups,
                csr, cert_id, status)


def _required(value: str | _Absent, what: str) -> str:
    if isinstance(value, _Absent) or not value:
        raise TemplateError(f"{what} has no value (give its parameter on the line or a Default)")
    return value


def _evaluate(expr: Any, env: Mapping[str, str | None]) -> str | _Absent:
    if isinstance(expr, str):
        return expr
    if not isinstance(expr, dict) or len(expr) != 1:
        raise TemplateError(f"a value must be a string, Ref, Fn::Join or Fn::Sub, not {expr!r:.60}")
    ((key, arg),) = expr.items()
    if key == "Ref":
        value = env.get(arg)
        return ABSENT if value is None else value
    if key == "Fn::Join":
        parts = [_evaluate(item, env) for item in arg[1]]
        return str(arg[0]).join(_present(p, "Fn::Join") for p in parts)
    if key == "Fn::Sub":
        text, names = _sub_parts(arg)
        local = {name: _evaluate(item, env) for name, item in names.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            return _present(local[name] if name in local else _evaluate({"Ref": name}, env), "Fn::Sub")

        return _SUB_VARIABLE.sub(substitute, text)
    raise TemplateError(f"a value must be a string, Ref, Fn::Join or Fn::Sub, not {key!r:.60}")


def _present(value: str | _Absent, where: str) -> str:
    if isinstance(value, _Absent):
        raise TemplateError(f"a parameter used in {where} has no value")
    return value
