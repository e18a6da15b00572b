"""Fuzz target: every AWS protocol body and request the edge parses (server/api/models.py
with constraints.py): rest-json (iot, iot-jobs-data, signer), json (acm), query (iam,
sts) and rest-xml (s3), for every operation of every served service. Requests are
built from each operation's own shapes (its URI template, its members in the query,
headers and body) with hostile values, plus raw hostile bodies. Only `ApiError` may
escape `resolve` and `parse`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import given
from hypothesis import strategies as st

from overair.server.api.contract import ApiError
from overair.server.api.models import HttpRequest, ServiceProtocol, load_services
from tests.fuzz.hostile import digits_or_not, hostile_bytes, hostile_text

SERVICES = load_services()
OPERATIONS = sorted((name, op) for name, service in SERVICES.items() for op in service.model.operation_names)

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
                        st.floats(allow_nan=False, allow_infinity=False), hostile_text,
                        st.text(max_size=20))  # any Unicode, lone surrogates included


def _value(shape: Any, draw: st.DrawFn, depth: int = 0) -> Any:
    """A value for `shape`, usually of the right type, often hostile within it."""
    if draw(st.integers(0, 9)) == 0:  # sometimes simply the wrong type
        return draw(json_scalar)
    kind = shape.type_name
    if kind == "structure" and depth < 5:
        members = shape.members
        chosen = draw(st.lists(st.sampled_from(sorted(members)), unique=True, max_size=4)) if members else []
        return {members[name].serialization.get("name", name): _value(members[name], draw, depth + 1)
                for name in chosen}
    if kind == "list" and depth < 5:
        return [_value(shape.member, draw, depth + 1) for _ in range(draw(st.integers(0, 3)))]
    if kind == "map" and depth < 5:
        size = draw(st.integers(0, 2))
        return {draw(hostile_text): _value(shape.value, draw, depth + 1) for _ in range(size)}
    if kind in ("integer", "long"):
        return draw(st.integers(min_value=-(10**25), max_value=10**25))
    if kind in ("float", "double"):
        return draw(st.floats(allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "timestamp":
        return draw(st.one_of(st.floats(min_value=-1e20, max_value=1e20), hostile_text,
                              st.datetimes().map(dt.datetime.isoformat)))
    if kind == "blob":
        return draw(st.one_of(hostile_text, st.binary(max_size=20).map(lambda b: b.hex())))
    enum = getattr(shape, "enum", None)
    if enum and draw(st.booleans()):
        return draw(st.sampled_from(enum))
    return draw(st.one_of(hostile_text, st.text(max_size=30)))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


@st.composite
def request_for(draw: st.DrawFn) -> tuple[ServiceProtocol, HttpRequest]:
    service_name, operation_name = draw(st.sampled_from(OPERATIONS))
    service = SERVICES[service_name]
    operation = service.model.operation_model(operation_name)
    shape = operation.input_shape
    values = _value(shape, draw) if shape is not None else {}
    values = values if isinstance(values, dict) else {}
    method, path, query, headers, body = "POST", "/", [], {}, b""
    if service.protocol in ("rest-json", "rest-xml"):
        method = str(operation.http.get("method", "POST"))
        template, _, literal = str(operation.http["requestUri"]).partition("?")
        segments = []
        for segment in template.strip("/").split("/"):
            if segment.startswith("{"):
                label = draw(st.one_of(hostile_text, digits_or_not, st.just("")))
                segments.append(quote(label, safe="/" if segment.endswith("+}") else ""))
            else:
                segments.append(segment)
        path = "/" + "/".join(segments)
        query = [(p.partition("=")[0], p.partition("=")[2]) for p in literal.split("&") if p]
        members = shape.members if shape is not None else {}
        for name, member in members.items():
            location = member.serialization.get("location")
            wire = str(member.serialization.get("name", name))
            if location == "querystring" and draw(st.booleans()):
                query.append((wire, draw(st.one_of(hostile_text, digits_or_not))))
            elif location == "header" and draw(st.booleans()):
                headers[wire.lower()] = draw(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=30))
        if service.protocol == "rest-json":
            body = draw(st.one_of(st.just(json.dumps(values).encode()), hostile_bytes,
                                  st.integers(1, 2000).map(lambda n: b"[" * n + b"]" * n)))
        else:
            body = draw(st.one_of(hostile_bytes, st.just(b"<a>" * 50), st.just(b"<!DOCTYPE x><x/>"),
                                  st.just(b"<CompleteMultipartUpload><Part><PartNumber>\xc2\xb2</PartNumber>"
                                          b"</Part></CompleteMultipartUpload>")))
    elif service.protocol == "json":
        headers["x-amz-target"] = f"{service.model.metadata['targetPrefix']}.{operation_name}"
        body = draw(st.one_of(st.just(json.dumps(values).encode()), hostile_bytes))
    else:  # query
        form = [("Action", operation_name), ("Version", "x")]
        for name, value in values.items():
            form.append((name, _text(value)))
            if isinstance(value, list):
                form.extend((f"{name}.member.{i}", _text(item)) for i, item in enumerate(value, start=1))
        form.extend(draw(st.lists(st.tuples(hostile_text, hostile_text), max_size=3)))
        body = draw(st.one_of(st.just(urlencode(form).encode()), hostile_bytes))
        headers["content-type"] = "application/x-www-form-urlencoded"
    raw_query = urlencode(query)
    return service, HttpRequest(method, path, HttpRequest.parse_query(raw_query), headers, body)


@given(request_for())
def test_fuzz_protocols_raise_only_api_errors(case: tuple[ServiceProtocol, HttpRequest]) -> None:
    service, request = case
    refused: ApiError | None = None
    try:
        service.parse(service.resolve(request), request)
    except ApiError as error:
        refused = error
    assert refused is None or 400 <= refused.status < 500, refused.code
