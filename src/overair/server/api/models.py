"""Routing, parsing and serialisation driven by the botocore service models.

Nothing here is written per operation: routes, member locations, required members,
types and XML/JSON names all come from the `service-2` models that ship with
botocore. Four protocols are covered:

* rest-json (iot, iot-jobs-data, signer): `http.method` + `http.requestUri` routing,
  members in the URI, query string, headers or a JSON body;
* json (acm): `X-Amz-Target: <targetPrefix>.<Operation>`, JSON body both ways;
* query (iam, sts): form-encoded `Action=<Operation>` requests, XML responses;
* rest-xml (s3): like rest-json with XML bodies (used by `s3.py`).

`HttpRequest`/`HttpResponse` are plain values, so this module knows nothing about the
web framework.

Every input is hostile until parsed (principle 5): JSON goes through `core/wirejson.py`
(bounded size, depth and numbers), XML through a pull parser that refuses document
types and stops past `max_xml_depth`/`max_xml_elements`, form bodies past
`max_query_fields`; numbers in text are ASCII digits only, integers fit the model's
32/64-bit types, timestamps lie between 1970 and 9999. Then `constraints.py` checks the
parsed members against the model (required, lengths, patterns, enums, ranges, sizes).
Parsing raises only `ApiError` (the service's validation error, `SerializationException`
or `MalformedXML`), so nothing a client sends reaches a handler unchecked.
"""

from __future__ import annotations

import abc
import base64
import binascii
import datetime as dt
import functools
import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, ClassVar, cast
from urllib.parse import parse_qsl, unquote

from botocore.loaders import Loader
from botocore.model import ServiceModel

from overair.apimodels import MODELS_DIR
from overair.core import wirejson
from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.server.api.constraints import describe, input_problems
from overair.server.api.contract import ApiError

logger = logging.getLogger("overair.api")

SERVICE_NAMES = ("iot", "iot-jobs-data", "iot-data", "signer", "acm", "iam", "sts", "s3", "overair")
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
# SigV4 signing name -> the model name the operation table uses, where they differ.
TABLE_NAMES = {"iotdata": "iot-data"}

# The error code for input that does not satisfy the model, per service.
VALIDATION_CODES = {
    "iot": "InvalidRequestException",
    "iot-jobs-data": "InvalidRequestException",
    "iotdata": "InvalidRequestException",  # iot-data, by its SigV4 signing name
    "signer": "ValidationException",
    "acm": "ValidationException",
    "iam": "ValidationError",
    "sts": "ValidationError",
    "s3": "InvalidArgument",
    "overair": "ValidationException",
}


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request as the protocol layer sees it (body already decoded from aws-chunked)."""

    method: str
    raw_path: str  # percent-encoded, as sent
    query: tuple[tuple[str, str], ...]  # decoded pairs, order and blanks kept
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @staticmethod
    def parse_query(raw_query: str) -> tuple[tuple[str, str], ...]:
        return tuple(parse_qsl(raw_query, keep_blank_values=True))

    def query_values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def query_value(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def has_query(self, name: str) -> bool:
        return any(k == name for k, _ in self.query)


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ResolvedOperation:
    operation: Any  # botocore.model.OperationModel
    labels: dict[str, str] = field(default_factory=dict)  # decoded URI labels by wire name

    @property
    def name(self) -> str:
        return str(self.operation.name)


# ---------------------------------------------------------------- scalar conversions


class _Invalid(Exception):
    """Input that does not fit the model (turned into the service's validation error)."""


# Numbers in text (URI, query, header, XML, form): ASCII only, bounded length.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")
_FLOAT_TEXT = re.compile(r"-?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})(?:[eE][-+]?[0-9]{1,4})?")
_EPOCH_TEXT = re.compile(r"-?[0-9]{1,12}(?:\.[0-9]{1,9})?")
# The Smithy integer types' ranges: what a handler may hand to the database.
_INTEGER_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
# Timestamps a request may carry: from the epoch to well before datetime's own end, so
# that arithmetic on them (a rollout's end, a window's next start) cannot overflow.
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_WHITESPACE = " \t"


def _integer(shape: Any, value: int, path: str) -> int:
    low, high = _INTEGER_RANGES.get(shape.type_name, _INTEGER_RANGES["long"])
    if not low <= value <= high:
        raise _Invalid(f"{path}: {shape.type_name} value out of range")
    return value


def _finite(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise _Invalid(f"{path}: expected a finite number")
    return value


def _bounded_time(value: dt.datetime, path: str) -> dt.datetime:
    try:
        aware = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (OverflowError, ValueError) as exc:
        raise _Invalid(f"{path}: timestamp out of range") from exc
    if not _EARLIEST <= aware < _LATEST:
        raise _Invalid(f"{path}: timestamp out of range (1970 to 9998)")
    return aware


def _epoch_time(seconds: float, path: str) -> dt.datetime:
    try:
        return _bounded_time(dt.datetime.fromtimestamp(seconds, tz=dt.UTC), path)
    except (OverflowError, OSError, ValueError) as exc:
        raise _Invalid(f"{path}: timestamp out of range") from exc


def _to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    if isinstance(value, str):
        return _parse_timestamp_text(value)
    raise TypeError(f"not a timestamp: {value!r}")


def _parse_timestamp_text(text: str, path: str = "timestamp") -> dt.datetime:
    text = text.strip(_WHITESPACE)
    if _EPOCH_TEXT.fullmatch(text):
        return _epoch_time(float(text), path)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            # The email date parser raises any of these on hostile text.
            raise _Invalid(f"{path}: invalid timestamp {text[:64]!r}") from exc
    return _bounded_time(parsed, path)


def _iso8601(value: Any) -> str:
    d = _to_datetime(value).astimezone(dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _rfc822(value: Any) -> str:
    return formatdate(_to_datetime(value).timestamp(), usegmt=True)


def _epoch(value: Any) -> int | float:
    seconds = _to_datetime(value).timestamp()
    return int(seconds) if seconds == int(seconds) else round(seconds, 3)


def _format_timestamp(shape: Any, value: Any, default: str) -> str | int | float:
    fmt = str(shape.serialization.get("timestampFormat", default)).lower()
    if fmt == "iso8601":
        return _iso8601(value)
    if fmt == "rfc822":
        return _rfc822(value)
    return _epoch(value)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _from_text(shape: Any, text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A scalar (or header list) from its text form (URI, query, header, XML, form)."""
    t = shape.type_name
    if t == "string":
        if shape.serialization.get("jsonvalue"):
            try:
                return wirejson.loads(base64.b64decode(text, validate=True), limits=limits, what=path)
            except (ValueError, binascii.Error, DecodeError) as exc:
                raise _Invalid(f"{path}: invalid JSON value") from exc
        return text
    if t in ("integer", "long"):
        stripped = text.strip(_WHITESPACE)
        if not _INTEGER_TEXT.fullmatch(stripped):
            raise _Invalid(f"{path}: expected an integer, got {text[:64]!r}")
        return _integer(shape, int(stripped), path)
    if t in ("float", "double"):
        stripped = text.strip(_WHITESPACE)
        if not _FLOAT_TEXT.fullmatch(stripped):
            raise _Invalid(f"{path}: expected a number, got {text[:64]!r}")
        return _finite(float(stripped), path)
    if t == "boolean":
        low = text.strip(_WHITESPACE).lower()
        if low not in ("true", "false"):
            raise _Invalid(f"{path}: expected true or false, got {text[:64]!r}")
        return low == "true"
    if t == "timestamp":
        return _parse_timestamp_text(text, path)
    if t == "blob":
        try:
            return base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise _Invalid(f"{path}: invalid base64") from exc
    if t == "list":
        return [_from_text(shape.member, part.strip(_WHITESPACE), path, limits)
                for part in text.split(",") if part.strip(_WHITESPACE)]
    raise _Invalid(f"{path}: a {t} cannot be given as text")


def _to_text(shape: Any, value: Any, timestamp_default: str = "iso8601") -> str:
    t = shape.type_name
    if t == "boolean":
        return "true" if value else "false"
    if t == "timestamp":
        return str(_format_timestamp(shape, value, timestamp_default))
    if t == "blob":
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return base64.b64encode(data).decode("ascii")
    if t in ("float", "double"):
        return _float_text(float(value))
    if t == "string" and shape.serialization.get("jsonvalue"):
        return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode("ascii")
    if t == "list":
        return ",".join(_to_text(shape.member, v, timestamp_default) for v in value if v is not None)
    return str(value)


# ------------------------------------------------------------------------ JSON shapes


def _from_json(shape: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    t = shape.type_name
    if t == "structure":
        if getattr(shape, "is_document_type", False):
            return value
        if not isinstance(value, dict):
            raise _Invalid(f"{path}: expected an object")
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            if wire in value and value[wire] is not None:
                out[name] = _from_json(member, value[wire], f"{path}.{name}" if path else name)
        return out
    if t == "list":
        if not isinstance(value, list):
            raise _Invalid(f"{path}: expected a list")
        return [_from_json(shape.member, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t == "map":
        if not isinstance(value, dict):
            raise _Invalid(f"{path}: expected a map")
        return {str(k): _from_json(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    if t == "string":
        if not isinstance(value, str):
            raise _Invalid(f"{path}: expected a string")
        return value
    if t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return _integer(shape, int(value), path)
            raise _Invalid(f"{path}: expected an integer")
        return _integer(shape, value, path)
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"{path}: expected a number")
        try:
            return _finite(float(value), path)
        except OverflowError as exc:  # an integer too large for a float
            raise _Invalid(f"{path}: expected a finite number") from exc
    if t == "boolean":
        if not isinstance(value, bool):
            raise _Invalid(f"{path}: expected a boolean")
        return value
    if t == "blob":
        if not isinstance(value, str):
            raise _Invalid(f"{path}: expected base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise _Invalid(f"{path}: invalid base64") from exc
    if t == "timestamp":
        if isinstance(value, bool):
            raise _Invalid(f"{path}: expected a timestamp")
        if isinstance(value, int | float):
            try:
                return _epoch_time(float(value), path)
            except OverflowError as exc:
                raise _Invalid(f"{path}: timestamp out of range") from exc
        if isinstance(value, str):
            return _parse_timestamp_text(value, path)
        raise _Invalid(f"{path}: expected a timestamp")
    return value


def _warn_unknown(shape: Any, value: Mapping[str, Any]) -> None:
    unknown = [k for k in value if k not in shape.members]
    if unknown:
        logger.warning("output members %s are not in shape %s; dropped", unknown, shape.name)


def _to_json(shape: Any, value: Any) -> Any:
    t = shape.type_name
    if t == "structure":
        if getattr(shape, "is_document_type", False):
            return value
        _warn_unknown(shape, value)
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            v = value.get(name)
            if v is None or member.serialization.get("location"):
                continue
            out[member.serialization.get("name", name)] = _to_json(member, v)
        return out
    if t == "list":
        return [_to_json(shape.member, v) for v in value]
    if t == "map":
        return {str(k): _to_json(shape.value, v) for k, v in value.items()}
    if t == "timestamp":
        return _format_timestamp(shape, value, "unixTimestamp")
    if t == "blob":
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return base64.b64encode(data).decode("ascii")
    if t in ("float", "double"):
        f = float(value)
        return _float_text(f) if math.isnan(f) or math.isinf(f) else f
    if t in ("integer", "long"):
        return int(value)
    if t == "boolean":
        return bool(value)
    return value


# ------------------------------------------------------------------------- XML shapes


_XML_FEED = 64 * 1024


def _parse_xml(body: bytes, limits: Limits = DEFAULT_LIMITS) -> ET.Element:
    """The root element of a request's XML body. No document types (entity expansion);
    parsing stops as soon as the nesting or the element count passes its limit, so a
    hostile body can neither recurse the shape walk nor build a huge tree."""
    upper = body.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise _Invalid("XML document type declarations are not accepted")
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))  # no DTDs
    root: ET.Element | None = None
    depth = elements = 0
    try:
        for offset in range(0, max(len(body), 1), _XML_FEED):
            parser.feed(body[offset:offset + _XML_FEED])
            for item in parser.read_events():
                event, element = cast("tuple[str, Any]", item)
                if event == "end":
                    depth -= 1
                    continue
                depth += 1
                elements += 1
                if root is None and isinstance(element, ET.Element):
                    root = element
                if depth > limits.max_xml_depth:
                    raise _Invalid(f"XML is nested deeper than {limits.max_xml_depth} levels")
                if elements > limits.max_xml_elements:
                    raise _Invalid(f"XML has more than {limits.max_xml_elements} elements")
        parser.close()
    except ET.ParseError as exc:
        raise _Invalid(f"malformed XML: {exc}") from exc
    if root is None:
        raise _Invalid("malformed XML: no root element")
    return root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_member_name(shape: Any, member_name: str) -> str:
    if shape.type_name == "list" and shape.serialization.get("flattened"):
        inner = shape.member.serialization.get("name")
        if inner is not None:
            return str(inner)
    return str(shape.serialization.get("name", member_name))


def _from_xml(shape: Any, node: ET.Element, path: str) -> Any:
    t = shape.type_name
    if t == "structure":
        out: dict[str, Any] = {}
        children: dict[str, list[ET.Element]] = {}
        for child in node:
            children.setdefault(_local(child.tag), []).append(child)
        for name, member in shape.members.items():
            if member.serialization.get("location"):
                continue
            wire = _xml_member_name(member, name)
            sub = f"{path}.{name}" if path else name
            if member.serialization.get("xmlAttribute"):
                for attr, text in node.attrib.items():
                    if _local(attr) == wire.split(":")[-1]:
                        out[name] = _from_text(member, text, sub)
                continue
            found = children.get(wire)
            if not found:
                continue
            if member.type_name == "list" and member.serialization.get("flattened"):
                out[name] = [_from_xml(member.member, el, sub) for el in found]
            elif member.type_name == "map" and member.serialization.get("flattened"):
                out[name] = _xml_map_entries(member, found, sub)
            else:
                out[name] = _from_xml(member, found[0], sub)
        return out
    if t == "list":
        item_name = shape.member.serialization.get("name", "member")
        return [_from_xml(shape.member, el, path) for el in node if _local(el.tag) == item_name]
    if t == "map":
        return _xml_map_entries(shape, [el for el in node if _local(el.tag) == "entry"], path)
    return _from_text(shape, node.text or "", path)


def _xml_map_entries(shape: Any, entries: list[ET.Element], path: str) -> dict[str, Any]:
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    out: dict[str, Any] = {}
    for entry in entries:
        key = value = None
        for el in entry:
            if _local(el.tag) == key_name:
                key = el.text or ""
            elif _local(el.tag) == value_name:
                value = _from_xml(shape.value, el, path)
        if key is not None:
            out[key] = value
    return out


def _to_xml(parent: ET.Element, shape: Any, value: Any, name: str) -> None:
    t = shape.type_name
    if t == "structure":
        node = ET.SubElement(parent, name)
        _fill_xml_structure(node, shape, value)
    elif t == "list":
        if shape.serialization.get("flattened"):
            for item in value:
                _to_xml(parent, shape.member, item, name)
        else:
            node = ET.SubElement(parent, name)
            item_name = shape.member.serialization.get("name", "member")
            for item in value:
                _to_xml(node, shape.member, item, item_name)
    elif t == "map":
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        flattened = shape.serialization.get("flattened")
        container = parent if flattened else ET.SubElement(parent, name)
        for k, v in value.items():
            entry = ET.SubElement(container, name if flattened else "entry")
            ET.SubElement(entry, key_name).text = str(k)
            _to_xml(entry, shape.value, v, value_name)
    else:
        ET.SubElement(parent, name).text = _to_text(shape, value)


def _fill_xml_structure(node: ET.Element, shape: Any, value: Mapping[str, Any]) -> None:
    _warn_unknown(shape, value)
    for member_name, member in shape.members.items():
        v = value.get(member_name)
        if v is None or member.serialization.get("location"):
            continue
        if member.serialization.get("xmlAttribute"):
            node.set(str(member.serialization["name"]), _to_text(member, v))
            continue
        _to_xml(node, member, v, _xml_member_name(member, member_name))


def _xml_bytes(root: ET.Element) -> bytes:
    text = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(text)


# ------------------------------------------------------------------------ protocols


class ServiceProtocol(abc.ABC):
    """One service: resolve a request to an operation, parse its input, write responses."""

    protocol: ClassVar[str] = ""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name: str = str(model.signing_name)
        self.validation_code = VALIDATION_CODES.get(self.name, "ValidationException")

    # -- helpers shared by all protocols

    def invalid(self, message: str) -> ApiError:
        return ApiError(self.validation_code, message, 400)

    def unknown_operation(self, what: str) -> ApiError:
        return ApiError("UnknownOperationException", f"{self.name}: no operation matches {what}", 404)

    def operation_model(self, name: str) -> Any:
        return self.model.operation_model(name)

    def request_id_headers(self, request_id: str) -> list[tuple[str, str]]:
        return [("x-amzn-RequestId", request_id)]

    # -- to implement

    @abc.abstractmethod
    def resolve(self, req: HttpRequest) -> ResolvedOperation:
        """Each wire protocol implements this."""

    def parse(self, resolved: ResolvedOperation, req: HttpRequest, *,
              limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
        """The operation's input members, checked against every constraint of the model;
        raises only `ApiError`."""
        try:
            params = self._parse(resolved, req, limits)
        except _Invalid as exc:
            raise self.invalid(str(exc)) from exc
        shape = resolved.operation.input_shape
        if shape is not None:
            problems = input_problems(shape, params, enums=self.name != "s3")
            if problems:
                raise self.invalid(describe(problems))
        return params

    @abc.abstractmethod
    def _parse(self, resolved: ResolvedOperation, req: HttpRequest, limits: Limits) -> dict[str, Any]:
        """Each wire protocol implements this."""

    @abc.abstractmethod
    def serialize(
        self,
        operation: Any,
        output: Mapping[str, Any],
        request_id: str,
        *,
        status: int | None = None,
        root: str | None = None,
    ) -> HttpResponse:
        """Each wire protocol implements this."""

    @abc.abstractmethod
    def render_error(self, error: ApiError, request_id: str, *, head: bool = False) -> HttpResponse:
        """Each wire protocol implements this."""


# --- REST routing (rest-json and rest-xml)

_LITERAL, _LABEL, _GREEDY = 2, 1, 0


@dataclass(frozen=True, slots=True)
class _Route:
    operation: Any
    method: str
    segments: tuple[tuple[int, str], ...]
    query: tuple[tuple[str, str | None], ...]
    required: tuple[tuple[str, str], ...]  # (location, wire name) of required bound members
    index: int
    deprecated: bool

    def match_path(self, segs: list[str]) -> dict[str, str] | None:
        kinds = [k for k, _ in self.segments]
        if _GREEDY not in kinds:
            if len(segs) != len(self.segments):
                return None
            return self._match_fixed(self.segments, segs)
        g = kinds.index(_GREEDY)
        before, after = self.segments[:g], self.segments[g + 1 :]
        if len(segs) < len(before) + len(after) + 1:
            return None
        head = self._match_fixed(before, segs[: len(before)])
        tail = self._match_fixed(after, segs[len(segs) - len(after) :])
        if head is None or tail is None:
            return None
        greedy = unquote("/".join(segs[len(before) : len(segs) - len(after)]))
        if not greedy:
            return None
        return {**head, **tail, self.segments[g][1]: greedy}

    @staticmethod
    def _match_fixed(template: tuple[tuple[int, str], ...], segs: list[str]) -> dict[str, str] | None:
        labels: dict[str, str] = {}
        for (kind, text), raw in zip(template, segs, strict=True):
            value = unquote(raw)
            if kind == _LITERAL:
                if value != text:
                    return None
            elif not value:
                return None
            else:
                labels[text] = value
        return labels

    def query_matches(self, req: HttpRequest) -> bool:
        for key, want in self.query:
            if want is None:
                if not req.has_query(key):
                    return False
            elif req.query_value(key) != want:
                return False
        return True

    def satisfied(self, req: HttpRequest) -> int:
        count = 0
        for location, wire in self.required:
            if (
                location == "uri"
                or (location == "querystring" and req.has_query(wire))
                or (location == "header" and wire.lower() in req.headers)
            ):
                count += 1
        return count

    def rank(self, req: HttpRequest) -> tuple[Any, ...]:
        return (
            len(self.query),
            tuple(k for k, _ in self.segments),
            self.satisfied(req),
            not self.deprecated,
            -self.index,
        )


def _split_path(raw_path: str) -> list[str]:
    raw = raw_path[1:] if raw_path.startswith("/") else raw_path
    return raw.split("/") if raw else []


def _build_route(operation: Any, index: int) -> _Route:
    http = operation.http
    path, _, query = str(http["requestUri"]).partition("?")
    segments: list[tuple[int, str]] = []
    for seg in _split_path(path):
        if seg.startswith("{") and seg.endswith("}"):
            name = seg[1:-1]
            segments.append((_GREEDY, name[:-1]) if name.endswith("+") else (_LABEL, name))
        else:
            segments.append((_LITERAL, seg))
    literals: list[tuple[str, str | None]] = []
    for part in query.split("&"):
        if part:
            key, eq, value = part.partition("=")
            literals.append((key, value if eq else None))
    required: list[tuple[str, str]] = []
    shape = operation.input_shape
    if shape is not None:
        for name in shape.required_members:
            member = shape.members[name]
            location = member.serialization.get("location")
            if location in ("uri", "querystring", "header"):
                required.append((location, str(member.serialization.get("name", name))))
    return _Route(
        operation=operation,
        method=str(http.get("method", "POST")).upper(),
        segments=tuple(segments),
        query=tuple(literals),
        required=tuple(required),
        index=index,
        deprecated=bool(operation.deprecated),
    )


class RestProtocol(ServiceProtocol):
    """What rest-json and rest-xml share: routing and URI/query/header members."""

    timestamp_default: ClassVar[str] = "unixTimestamp"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._routes: dict[str, list[_Route]] = {}
        for index, name in enumerate(model.operation_names):
            route = _build_route(model.operation_model(name), index)
            self._routes.setdefault(route.method, []).append(route)

    def resolve(self, req: HttpRequest) -> ResolvedOperation:
        method = req.method.upper()
        lookup_method = "GET" if method == "HEAD" and "HEAD" not in self._routes else method
        routes = self._routes.get(lookup_method, [])
        segs = _split_path(req.raw_path)
        found = self._candidates(routes, segs, req)
        if not found and segs and segs[-1] == "":
            found = self._candidates(routes, segs[:-1], req)
        elif not found:
            found = self._candidates(routes, [*segs, ""], req)
        if not found:
            raise self.unknown_operation(f"{req.method} {req.raw_path}")
        complete = [(r, labels) for r, labels in found if r.satisfied(req) == len(r.required)]
        pool = complete or found
        route, labels = max(pool, key=lambda item: item[0].rank(req))
        return ResolvedOperation(route.operation, labels)

    @staticmethod
    def _candidates(
        routes: list[_Route], segs: list[str], req: HttpRequest
    ) -> list[tuple[_Route, dict[str, str]]]:
        out = []
        for route in routes:
            labels = route.match_path(segs)
            if labels is not None and route.query_matches(req):
                out.append((route, labels))
        return out

    def _parse(self, resolved: ResolvedOperation, req: HttpRequest, limits: Limits) -> dict[str, Any]:
        shape = resolved.operation.input_shape
        if shape is None:
            return {}
        params: dict[str, Any] = {}
        has_body_members = False
        claimed = {wire for wire, _ in self._query_literals(resolved)}
        for name, member in shape.members.items():
            ser = member.serialization
            location = ser.get("location")
            wire = str(ser.get("name", name))
            if location == "uri":
                if wire in resolved.labels:
                    params[name] = _from_text(member, resolved.labels[wire], name, limits)
            elif location == "querystring":
                claimed.add(wire)
                if member.type_name == "list":
                    values = req.query_values(wire)
                    if values:
                        params[name] = [_from_text(member.member, v, name, limits) for v in values]
                elif member.type_name != "map":
                    value = req.query_value(wire)
                    if value is not None:
                        params[name] = _from_text(member, value, name, limits)
            elif location == "header":
                value = req.headers.get(wire.lower())
                if value is not None:
                    params[name] = _from_text(member, value, name, limits)
            elif location == "headers":
                prefix = wire.lower()
                found = {k[len(prefix) :]: v for k, v in req.headers.items() if k.startswith(prefix)}
                if found:
                    params[name] = found
            elif location is None:
                has_body_members = True
        for name, member in shape.members.items():  # query maps take what nobody claimed
            if member.serialization.get("location") == "querystring" and member.type_name == "map":
                rest = {k: v for k, v in req.query if k not in claimed and not k.startswith("X-Amz-")}
                if rest:
                    params[name] = rest
        payload = shape.serialization.get("payload")
        if payload is not None:
            member = shape.members[payload]
            if member.type_name == "blob":
                params[payload] = req.body
            elif member.type_name == "string":
                if req.body:
                    params[payload] = req.body.decode("utf-8", "replace")
            elif req.body.strip():
                params[payload] = self._parse_body(member, req.body, payload_root=True, limits=limits)
        elif has_body_members and req.body.strip():
            params.update(self._parse_body(shape, req.body, payload_root=False, limits=limits))
        return params

    @staticmethod
    def _query_literals(resolved: ResolvedOperation) -> list[tuple[str, str | None]]:
        _, _, query = str(resolved.operation.http["requestUri"]).partition("?")
        return [(p.partition("=")[0], None) for p in query.split("&") if p]

    @abc.abstractmethod
    def _parse_body(self, shape: Any, body: bytes, *, payload_root: bool, limits: Limits) -> Any:
        """Each wire protocol implements this."""

    def serialize(
        self,
        operation: Any,
        output: Mapping[str, Any],
        request_id: str,
        *,
        status: int | None = None,
        root: str | None = None,
    ) -> HttpResponse:
        shape = operation.output_shape
        code = int(operation.http.get("responseCode", 200))
        headers = self.request_id_headers(request_id)
        body = b""
        if shape is None:
            return HttpResponse(status or code, headers, self._empty_body(status or code))
        _warn_unknown(shape, output)
        for name, member in shape.members.items():
            value = output.get(name)
            if value is None:
                continue
            location = member.serialization.get("location")
            wire = str(member.serialization.get("name", name))
            if location == "header":
                if member.type_name == "list" and not value:
                    continue
                headers.append((wire, _to_text(member, value, "rfc822")))
            elif location == "headers":
                headers.extend((wire + str(k), str(v)) for k, v in value.items())
            elif location == "statusCode":
                code = int(value)
        code = status or code
        payload = shape.serialization.get("payload")
        if payload is not None:
            member = shape.members[payload]
            value = output.get(payload)
            if member.type_name in ("blob", "string"):
                if value is not None:
                    body = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                    if not any(k.lower() == "content-type" for k, _ in headers):
                        headers.append(("Content-Type", "application/octet-stream"))
            elif value is not None:
                root_name = root or str(member.serialization.get("name", payload))
                body, ctype = self._write_body(member, value, root_name)
                headers.append(("Content-Type", ctype))
        elif any(m.serialization.get("location") is None for m in shape.members.values()):
            body, ctype = self._write_body(shape, output, root or self._default_root(operation))
            headers.append(("Content-Type", ctype))
        else:
            body = self._empty_body(code)
        if code in (204, 304):
            body = b""
        return HttpResponse(code, headers, body)

    def _default_root(self, operation: Any) -> str:
        return str(operation.output_shape.name)

    def _empty_body(self, status: int) -> bytes:
        return b""

    @abc.abstractmethod
    def _write_body(self, shape: Any, value: Mapping[str, Any], root: str) -> tuple[bytes, str]:
        """Each wire protocol implements this."""


class RestJsonProtocol(RestProtocol):
    protocol = "rest-json"

    def _parse_body(self, shape: Any, body: bytes, *, payload_root: bool, limits: Limits) -> Any:
        return _from_json(shape, _json_body(body, limits), "")

    def _write_body(self, shape: Any, value: Mapping[str, Any], root: str) -> tuple[bytes, str]:
        return json.dumps(_to_json(shape, value)).encode("utf-8"), "application/json"

    def _empty_body(self, status: int) -> bytes:
        return b"" if status in (204, 304) else b"{}"

    def render_error(self, error: ApiError, request_id: str, *, head: bool = False) -> HttpResponse:
        headers = [*self.request_id_headers(request_id), ("x-amzn-ErrorType", error.code)]
        if head:
            return HttpResponse(error.status, headers)
        headers.append(("Content-Type", "application/json"))
        body = json.dumps({"message": error.message, "code": error.code}).encode("utf-8")
        return HttpResponse(error.status, headers, body)


class RestXmlProtocol(RestProtocol):
    protocol = "rest-xml"

    def __init__(self, model: Any, xmlns: str | None = None) -> None:
        super().__init__(model)
        self.xmlns = xmlns

    def request_id_headers(self, request_id: str) -> list[tuple[str, str]]:
        return [("x-amz-request-id", request_id), ("x-amz-id-2", request_id)]

    def _parse_body(self, shape: Any, body: bytes, *, payload_root: bool, limits: Limits) -> Any:
        try:
            root = _parse_xml(body, limits)
        except _Invalid as exc:
            raise ApiError("MalformedXML", str(exc), 400) from exc
        return _from_xml(shape, root, "")

    def _write_body(self, shape: Any, value: Mapping[str, Any], root: str) -> tuple[bytes, str]:
        node = ET.Element(root)
        if self.xmlns:
            node.set("xmlns", self.xmlns)
        _fill_xml_structure(node, shape, value)
        return _xml_bytes(node), "application/xml"

    def _default_root(self, operation: Any) -> str:
        name = str(operation.output_shape.name)
        return name.removesuffix("Output") + "Result" if name.endswith("Output") else name

    def render_error(self, error: ApiError, request_id: str, *, head: bool = False) -> HttpResponse:
        headers = self.request_id_headers(request_id)
        if head:
            return HttpResponse(error.status, headers)
        root = ET.Element("Error")
        ET.SubElement(root, "Code").text = error.code
        ET.SubElement(root, "Message").text = error.message
        for name, value in error.fields:
            ET.SubElement(root, name).text = value
        ET.SubElement(root, "RequestId").text = request_id
        headers.append(("Content-Type", "application/xml"))
        return HttpResponse(error.status, headers, _xml_bytes(root))


def _json_body(body: bytes, limits: Limits) -> Any:
    try:
        return wirejson.loads(body, limits=limits, what="Request body")
    except DecodeError as exc:
        raise ApiError("SerializationException", exc.message, 400) from exc


class JsonProtocol(ServiceProtocol):
    protocol = "json"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.target_prefix = str(model.metadata.get("targetPrefix", ""))
        self.content_type = f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.1')}"

    def resolve(self, req: HttpRequest) -> ResolvedOperation:
        target = req.headers.get("x-amz-target")
        if not target:
            raise self.unknown_operation(f"{req.method} {req.raw_path} without X-Amz-Target")
        prefix, _, op_name = target.rpartition(".")
        if prefix != self.target_prefix or op_name not in self.model.operation_names:
            raise self.unknown_operation(f"X-Amz-Target {target}")
        if req.method.upper() != "POST":
            raise self.unknown_operation(f"{req.method} {target} (only POST)")
        return ResolvedOperation(self.model.operation_model(op_name))

    def _parse(self, resolved: ResolvedOperation, req: HttpRequest, limits: Limits) -> dict[str, Any]:
        shape = resolved.operation.input_shape
        if shape is None:
            return {}
        doc = _json_body(req.body, limits) if req.body.strip() else {}
        result = _from_json(shape, doc, "")
        return dict(result) if result else {}

    def serialize(
        self,
        operation: Any,
        output: Mapping[str, Any],
        request_id: str,
        *,
        status: int | None = None,
        root: str | None = None,
    ) -> HttpResponse:
        shape = operation.output_shape
        doc = _to_json(shape, output) if shape is not None else {}
        headers = [*self.request_id_headers(request_id), ("Content-Type", self.content_type)]
        return HttpResponse(status or 200, headers, json.dumps(doc).encode("utf-8"))

    def render_error(self, error: ApiError, request_id: str, *, head: bool = False) -> HttpResponse:
        headers = [*self.request_id_headers(request_id), ("Content-Type", self.content_type)]
        body = json.dumps({"__type": error.code, "message": error.message}).encode("utf-8")
        return HttpResponse(error.status, headers, b"" if head else body)


class QueryProtocol(ServiceProtocol):
    protocol = "query"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.xmlns = str(model.metadata.get("xmlNamespace", ""))

    @staticmethod
    def _form(req: HttpRequest, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
        """The request's parameters (query string and form body). Bounded: at most
        `max_query_fields` fields, each name at most `max_query_name_parts` dotted parts
        (the shape walk builds every prefix of every name)."""
        form = dict(req.query)
        ctype = req.headers.get("content-type", "")
        if req.body and (not ctype or ctype.startswith("application/x-www-form-urlencoded")):
            try:
                text = req.body.decode("utf-8")
                form.update(parse_qsl(text, keep_blank_values=True, max_num_fields=limits.max_query_fields))
            except UnicodeDecodeError as exc:
                raise ApiError("MalformedQueryString", "Form body is not UTF-8", 400) from exc
            except ValueError as exc:  # more fields than max_num_fields
                raise ApiError("MalformedQueryString",
                               f"Form body has more than {limits.max_query_fields} fields", 400) from exc
        if len(form) > limits.max_query_fields:
            raise ApiError("MalformedQueryString", f"More than {limits.max_query_fields} parameters", 400)
        for key in form:
            if key.count(".") >= limits.max_query_name_parts:
                raise ApiError("MalformedQueryString", f"Parameter name {key[:64]!r} has more than "
                               f"{limits.max_query_name_parts} parts", 400)
        return form

    def resolve(self, req: HttpRequest) -> ResolvedOperation:
        action = self._form(req).get("Action")
        if not action:
            raise self.unknown_operation(f"{req.method} {req.raw_path} without Action")
        if action not in self.model.operation_names:
            raise self.unknown_operation(f"Action={action}")
        return ResolvedOperation(self.model.operation_model(action))

    def _parse(self, resolved: ResolvedOperation, req: HttpRequest, limits: Limits) -> dict[str, Any]:
        shape = resolved.operation.input_shape
        if shape is None:
            return {}
        form = self._form(req, limits)
        prefixes: set[str] = set()
        for key in form:
            parts = key.split(".")
            for i in range(1, len(parts) + 1):
                prefixes.add(".".join(parts[:i]))
        result = _from_query(shape, form, prefixes, "", "")
        return dict(result)

    def serialize(
        self,
        operation: Any,
        output: Mapping[str, Any],
        request_id: str,
        *,
        status: int | None = None,
        root: str | None = None,
    ) -> HttpResponse:
        top = ET.Element(f"{operation.name}Response")
        if self.xmlns:
            top.set("xmlns", self.xmlns)
        shape = operation.output_shape
        if shape is not None:
            wrapper = shape.serialization.get("resultWrapper") or f"{operation.name}Result"
            result = ET.SubElement(top, wrapper)
            _fill_xml_structure(result, shape, output)
        meta = ET.SubElement(top, "ResponseMetadata")
        ET.SubElement(meta, "RequestId").text = request_id
        headers = [*self.request_id_headers(request_id), ("Content-Type", "text/xml")]
        return HttpResponse(status or 200, headers, _xml_bytes(top))

    def render_error(self, error: ApiError, request_id: str, *, head: bool = False) -> HttpResponse:
        top = ET.Element("ErrorResponse")
        if self.xmlns:
            top.set("xmlns", self.xmlns)
        err = ET.SubElement(top, "Error")
        ET.SubElement(err, "Type").text = "Sender" if error.status < 500 else "Receiver"
        ET.SubElement(err, "Code").text = error.code
        ET.SubElement(err, "Message").text = error.message
        for name, value in error.fields:
            ET.SubElement(err, name).text = value
        ET.SubElement(top, "RequestId").text = request_id
        headers = [*self.request_id_headers(request_id), ("Content-Type", "text/xml")]
        return HttpResponse(error.status, headers, b"" if head else _xml_bytes(top))


def _from_query(shape: Any, form: Mapping[str, str], prefixes: set[str], key: str, path: str) -> Any:
    t = shape.type_name
    if t == "structure":
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            sub = f"{key}.{wire}" if key else str(wire)
            if sub in prefixes:
                out[name] = _from_query(member, form, prefixes, sub, f"{path}.{name}" if path else name)
        return out
    if t == "list":
        if shape.serialization.get("flattened"):
            base = key
            inner = shape.member.serialization.get("name")
            if inner:
                base = ".".join([*key.split(".")[:-1], str(inner)])
        else:
            base = f"{key}.{shape.member.serialization.get('name', 'member')}"
        items = []
        i = 1
        while f"{base}.{i}" in prefixes:
            items.append(_from_query(shape.member, form, prefixes, f"{base}.{i}", f"{path}[{i}]"))
            i += 1
        return items
    if t == "map":
        base = key if shape.serialization.get("flattened") else f"{key}.entry"
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        out_map: dict[str, Any] = {}
        i = 1
        while f"{base}.{i}" in prefixes:
            k = form.get(f"{base}.{i}.{key_name}")
            value_key = f"{base}.{i}.{value_name}"
            if k is not None:
                out_map[k] = (
                    _from_query(shape.value, form, prefixes, value_key, f"{path}.{k}")
                    if value_key in prefixes else None
                )
            i += 1
        return out_map
    text = form.get(key)
    if text is None:
        return None
    return _from_text(shape, text, path)


# --------------------------------------------------------------------------- loading

_PROTOCOLS: dict[str, Callable[[Any], ServiceProtocol]] = {
    "rest-json": RestJsonProtocol,
    "json": JsonProtocol,
    "query": QueryProtocol,
    "rest-xml": lambda model: RestXmlProtocol(model, S3_XMLNS if model.signing_name == "s3" else None),
}


def load_service(name: str) -> ServiceProtocol:
    """The protocol handler for one botocore service model (by model name)."""
    loader = Loader(extra_search_paths=[str(MODELS_DIR)])  # overair's own service model
    model = ServiceModel(loader.load_service_model(name, "service-2"), service_name=name)
    factory = _PROTOCOLS.get(model.protocol)
    if factory is None:
        raise ValueError(f"{name}: protocol {model.protocol} is not supported")
    return factory(model)


@functools.cache
def load_services() -> dict[str, ServiceProtocol]:
    """All served services, keyed by SigV4 signing name (loaded once per process)."""
    services = {}
    for name in SERVICE_NAMES:
        service = load_service(name)
        services[service.name] = service
    return services


def parse_timestamp(value: Any) -> dt.datetime:
    """An aware datetime from a datetime, epoch number or ISO-8601/RFC-822 text."""
    try:
        return _to_datetime(value)
    except _Invalid as exc:
        raise ValueError(str(exc)) from exc

