"""The Device Shadow service's documents: pure logic, no I/O.

AWS IoT's semantics (developer guide, "Device Shadow service documents" and "Device
Shadow error messages"), which the AWS IoT Device SDKs' shadow clients rely on:

- An update request is `{"state": {"desired": {...}, "reported": {...}}, "clientToken",
  "version"}`; only `desired` and `reported` are stored, anything else under `state` is
  "State contains an invalid node". Updates merge: a member set to null is removed,
  objects merge member by member, any other value (arrays included) replaces the old
  one; `"desired": null` removes the whole section.
- `version`, when given, must equal the shadow's current version (else 409 "Version
  conflict"); every accepted update adds one. Deleting a shadow keeps its version: the
  next update continues from it.
- `metadata` mirrors the state with `{"timestamp": <epoch seconds>}` for each leaf
  (arrays: one per element), set when that member was last updated.
- The delta is every member of `desired` whose value differs from `reported` (recursing
  where both are objects); members only in `reported` never appear in it.
- Limits: desired + reported at most 8 KB as JSON (metadata does not count), at most 6
  levels of nesting, clientToken at most 64 bytes (core/limits.py).

Errors are `ShadowError` with AWS's HTTP-style `code` (400, 404, 409, 413), as the
MQTT `rejected` topics and the iot-data API both report them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from overair.core import wirejson
from overair.core.errors import DecodeError, PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits

SECTIONS = ("desired", "reported")
# iot-data model, ShadowName: [a-zA-Z0-9:_-]+, 1-64 characters. "$package" is AWS's
# reserved named shadow of the Software Package Catalog (devices report into it).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")
PACKAGE_SHADOW = "$package"
_ABSENT = object()


class ShadowError(PeerInputError):
    """A request the Device Shadow service rejects; `status` is AWS's error code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, code=str(status))
        self.status = status


def is_shadow_name(name: str) -> bool:
    return name == PACKAGE_SHADOW or (1 <= len(name) <= 64 and set(name) <= _NAME_CHARS)


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    # Per section: None = remove the section ("desired": null), a dict = merge it,
    # absent from the mapping = leave it alone.
    sections: dict[str, dict[str, Any] | None]
    version: int | None
    client_token: str | None


@dataclass(slots=True)
class Shadow:
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # {"desired": {...}, "reported": {...}}
    version: int = 0

    def section(self, name: str) -> dict[str, Any]:
        return self.desired if name == "desired" else self.reported


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def parse_request(payload: bytes, limits: Limits = DEFAULT_LIMITS, *,
                  what: str = "request") -> dict[str, Any]:
    """The JSON object of a get/delete/update request (an empty payload is `{}`)."""
    if not payload.strip():
        return {}
    try:
        value = wirejson.loads(payload, limits=limits, max_bytes=limits.max_shadow_request_bytes,
                               max_depth=limits.max_shadow_depth + 4, what=f"shadow {what}")
    except DecodeError as exc:
        status = 413 if "exceeds the limit" in exc.message else 400
        raise ShadowError(status, "Invalid JSON" if status == 400 else
                          "The payload exceeds the maximum size allowed") from exc
    if not isinstance(value, dict):
        raise ShadowError(400, "Invalid JSON")
    try:
        # JSON escapes can spell lone surrogates, which no UTF-8 document can hold (found
        # by tests/fuzz/test_fuzz_shadow.py): refused as AWS refuses what is not UTF-8.
        encode(value)
    except UnicodeEncodeError:
        raise ShadowError(415, "Unsupported documented encoding; supported encoding is UTF-8") from None
    return value


def client_token(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> str | None:
    token = request.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or not token or len(token.encode()) > limits.max_client_token_length:
        raise ShadowError(400, "Invalid clientToken")
    return token


def token_if_any(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> str | None:
    """The request's clientToken if it is a usable one (for an error reply)."""
    try:
        return client_token(request, limits)
    except ShadowError:
        return None


def parse_version(request: dict[str, Any]) -> int | None:
    """The request's `version` (update and delete requests may carry one)."""
    version = request.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise ShadowError(400, "Invalid version")
    return version


def parse_update(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> UpdateRequest:
    token = client_token(request, limits)
    version = parse_version(request)
    if "state" not in request:
        raise ShadowError(400, "Missing required node: state")
    state = request["state"]
    if not isinstance(state, dict):
        raise ShadowError(400, "State node must be an object")
    sections: dict[str, dict[str, Any] | None] = {}
    for key, value in state.items():
        if key not in SECTIONS:
            raise ShadowError(400, "State contains an invalid node")
        if value is not None and not isinstance(value, dict):
            raise ShadowError(400, f"{key.capitalize()} node must be an object")
        if value is not None and _depth(value) > limits.max_shadow_depth:
            raise ShadowError(400, "JSON contains too many levels of nesting; maximum is "
                                   f"{limits.max_shadow_depth}")
        sections[key] = value
    return UpdateRequest(sections, version, token)


def _merge(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _stamps(value: Any, now: int) -> Any:
    """Metadata for a value written at `now`."""
    if isinstance(value, dict):
        return {k: _stamps(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_stamps(v, now) for v in value]
    return {"timestamp": now}


def _merge_metadata(old: Any, patch: dict[str, Any], now: int) -> dict[str, Any]:
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and "timestamp" not in out[key]:
            out[key] = _merge_metadata(out[key], value, now)
        else:
            out[key] = _stamps(value, now)
    return out


def delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key, _ABSENT)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                out[key] = inner
        elif want != have:
            out[key] = want
    return out


def _delta_metadata(difference: dict[str, Any], metadata: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    source = metadata if isinstance(metadata, dict) else {}
    for key, value in difference.items():
        meta = source.get(key)
        if isinstance(value, dict) and isinstance(meta, dict) and "timestamp" not in meta:
            out[key] = _delta_metadata(value, meta)
        elif meta is not None:
            out[key] = meta
    return out


def state_size(desired: dict[str, Any], reported: dict[str, Any]) -> int:
    """Bytes of the state as AWS counts them: desired and reported, no metadata."""
    state = {k: v for k, v in (("desired", desired), ("reported", reported)) if v}
    return len(json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Applied:
    previous: Shadow | None  # None: the shadow did not exist
    current: Shadow
    accepted: dict[str, Any]  # the update/accepted body without timestamp/clientToken
    delta: dict[str, Any]  # the whole delta after the update (empty: none)


def apply_update(current: Shadow | None, next_version: int, update: UpdateRequest, now: int,
                 limits: Limits = DEFAULT_LIMITS) -> Applied:
    """The shadow after `update`. `current` None: it does not exist (yet, or since a
    delete); `next_version` is the version it gets (AWS keeps counting across deletes)."""
    if update.version is not None and update.version != (current.version if current else next_version - 1):
        raise ShadowError(409, "Version conflict")
    base = current or Shadow()
    new = Shadow(dict(base.desired), dict(base.reported), dict(base.metadata), next_version)
    accepted_state: dict[str, Any] = {}
    accepted_meta: dict[str, Any] = {}
    for name, patch in update.sections.items():
        if patch is None:
            setattr(new, name, {})
            new.metadata.pop(name, None)
            accepted_state[name] = None
            continue
        setattr(new, name, _merge(new.section(name), patch))
        new.metadata[name] = _merge_metadata(new.metadata.get(name), patch, now)
        accepted_state[name] = patch
        accepted_meta[name] = _stamps_for_patch(patch, now)
    size = state_size(new.desired, new.reported)
    if size > limits.max_shadow_state_bytes:
        raise ShadowError(413, "The payload exceeds the maximum size allowed")
    accepted = {"state": accepted_state, "metadata": accepted_meta, "version": next_version}
    return Applied(current, new, accepted, delta(new.desired, new.reported))


def _stamps_for_patch(patch: dict[str, Any], now: int) -> dict[str, Any]:
    """update/accepted's metadata: a timestamp for each member the request set (a
    removed member, null in the request, gets one too, as AWS answers)."""
    return {k: ({"timestamp": now} if v is None else _stamps(v, now)) for k, v in patch.items()}


def state_view(shadow: Shadow) -> dict[str, Any]:
    """`state` of a get/accepted answer and of update/documents: desired, reported and
    (get only) delta, each only when it has members."""
    state: dict[str, Any] = {}
    if shadow.desired:
        state["desired"] = shadow.desired
    if shadow.reported:
        state["reported"] = shadow.reported
    return state


def get_document(shadow: Shadow, now: int, token: str | None) -> dict[str, Any]:
    """get/accepted (and GetThingShadow): the state with its delta, metadata, version."""
    state = state_view(shadow)
    difference = delta(shadow.desired, shadow.reported)
    if difference:
        state["delta"] = difference
    metadata = {k: v for k, v in shadow.metadata.items() if k in SECTIONS and v}
    out: dict[str, Any] = {"state": state, "metadata": metadata, "version": shadow.version,
                           "timestamp": now}
    if token is not None:
        out["clientToken"] = token
    return out


def documents_message(applied: Applied, now: int, token: str | None) -> dict[str, Any]:
    """update/documents: the shadow before and after an accepted update."""
    def side(shadow: Shadow | None) -> dict[str, Any]:
        if shadow is None:
            return {"state": {}, "metadata": {}, "version": applied.current.version - 1}
        metadata = {k: v for k, v in shadow.metadata.items() if k in SECTIONS and v}
        return {"state": state_view(shadow), "metadata": metadata, "version": shadow.version}

    out: dict[str, Any] = {"previous": side(applied.previous), "current": side(applied.current),
                           "timestamp": now}
    if token is not None:
        out["clientToken"] = token
    return out


def delta_message(applied: Applied, now: int, token: str | None) -> dict[str, Any]:
    metadata = _delta_metadata(applied.delta, applied.current.metadata.get("desired"))
    out: dict[str, Any] = {"state": applied.delta, "metadata": metadata,
                           "version": applied.current.version, "timestamp": now}
    if token is not None:
        out["clientToken"] = token
    return out


def error_message(error: ShadowError, now: int, token: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"code": error.status, "message": error.message, "timestamp": now}
    if token is not None:
        out["clientToken"] = token
    return out


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
