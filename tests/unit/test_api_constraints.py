"""The botocore model's constraints at the edge (server/api/constraints.py,
model_patterns.py): every served operation's input is checked, whole, in AWS's words."""

from __future__ import annotations

import re

import pytest

from overair.server.api.constraints import input_problems
from overair.server.api.model_patterns import UnsupportedPattern, compile_pattern, translate
from overair.server.api.models import load_services


def shape(service: str, operation: str) -> object:
    return load_services()[service].model.operation_model(operation).input_shape


def test_every_pattern_of_every_served_input_compiles() -> None:
    seen: set[str] = set()

    def walk(node: object) -> None:
        name = getattr(node, "name", "")
        if node is None or name in seen:
            return
        seen.add(name)
        pattern = node.metadata.get("pattern")  # type: ignore[attr-defined]
        if pattern is not None:
            compile_pattern(pattern)
        kind = node.type_name  # type: ignore[attr-defined]
        if kind == "structure":
            for member in node.members.values():  # type: ignore[attr-defined]
                walk(member)
        elif kind == "list":
            walk(node.member)  # type: ignore[attr-defined]
        elif kind == "map":
            walk(node.key)  # type: ignore[attr-defined]
            walk(node.value)  # type: ignore[attr-defined]

    for service in load_services().values():
        for operation in service.model.operation_names:
            walk(service.model.operation_model(operation).input_shape)
    assert seen


def test_names_match_their_pattern_whole() -> None:
    create_thing = shape("iot", "CreateThing")
    assert input_problems(create_thing, {"thingName": "sensor-1"}) == []
    # re.match with "$" would accept these; the model's pattern matched whole does not.
    for name in ("sensor-1\n", "sensor 1", "sensor/1", "sensör"):
        problems = input_problems(create_thing, {"thingName": name})
        assert len(problems) == 1, name
        assert "regular expression pattern" in problems[0], name


def test_lengths_count_utf16_code_units_as_aws_does() -> None:
    create_job = shape("iot", "CreateJob")
    limit = create_job.members["description"].metadata["max"]  # type: ignore[attr-defined]
    fits = "\U0001f600" * (limit // 2)  # two UTF-16 code units each
    base = {"jobId": "j", "targets": ["arn:x"]}
    assert input_problems(create_job, {**base, "description": fits}) == []
    problems = input_problems(create_job, {**base, "description": fits + "x"})
    assert problems
    assert f"less than or equal to {limit}" in problems[0]


def test_ranges_sizes_required_and_enums() -> None:
    list_things = shape("iot", "ListThings")
    assert "less than or equal to 250" in input_problems(list_things, {"maxResults": 251})[0]
    assert "greater than or equal to 1" in input_problems(list_things, {"maxResults": 0})[0]
    create_job = shape("iot", "CreateJob")
    missing = input_problems(create_job, {"jobId": "j"})
    assert any("'targets'" in p and "must not be null" in p for p in missing)
    too_few = input_problems(create_job, {"jobId": "j", "targets": []})
    assert any("'targets'" in p and "length greater than or equal to 1" in p for p in too_few)
    wrong = input_problems(create_job, {"jobId": "j", "targets": ["arn:x"], "targetSelection": "ALL"})
    assert any("enum value set" in p for p in wrong)


def test_unicode_property_classes_are_translated() -> None:
    # iam/sts tag keys: [\p{L}\p{Z}\p{N}_.:/=+\-@]+
    pattern = compile_pattern(r"[\p{L}\p{Z}\p{N}_.:/=+\-@]+")
    assert pattern.fullmatch("Équipe 7")
    assert not pattern.fullmatch("a\tb")
    printable = compile_pattern(r"[^\p{C}]+")
    assert printable.fullmatch("déjà vu")
    assert not printable.fullmatch("a\u200bb")
    assert translate(r"\p{Digit}+") == "[0-9]+"
    with pytest.raises(UnsupportedPattern):
        translate(r"\p{IsGreek}")
    assert compile_pattern(r"[\w-]+").flags & re.ASCII  # Java's \w is ASCII


def test_text_that_storage_cannot_hold_is_refused_everywhere() -> None:
    create_thing = shape("iot", "CreateThing")
    attributes = {"attributePayload": {"attributes": {"k": "nul\x00here"}}}
    assert "NUL" in input_problems(create_thing, {"thingName": "t", **attributes})[0]
    lone = {"attributePayload": {"attributes": {"k": "\ud800"}}}
    assert "surrogate" in input_problems(create_thing, {"thingName": "t", **lone})[0]


def test_sensitive_values_are_not_echoed() -> None:
    import_certificate = shape("acm", "ImportCertificate")
    secret = "-----BEGIN PRIVATE KEY----- secret"
    problems = input_problems(import_certificate, {"Certificate": b"x", "PrivateKey": secret.encode() * 3000})
    assert problems
    assert all(secret not in p for p in problems)
    assert any("'PrivateKey'" in p for p in problems)
