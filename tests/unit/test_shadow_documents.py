"""core/shadow.py: AWS's Device Shadow document semantics, as pure functions (the
end-to-end behaviour with the SDK is tests/e2e/test_sdk_shadow.py)."""

from __future__ import annotations

from typing import Any

import pytest

from overair.core import shadow as doc
from overair.core.limits import DEFAULT_LIMITS
from overair.core.shadow import Shadow, ShadowError

NOW = 1_700_000_000


def _apply(current: Shadow | None, request: dict[str, Any], now: int = NOW) -> doc.Applied:
    version = (current.version if current else 0) + 1
    return doc.apply_update(current, version, doc.parse_update(request), now)


def test_updates_merge_remove_and_replace() -> None:
    first = _apply(None, {"state": {"reported": {"a": 1, "obj": {"x": 1, "y": 2}, "list": [1, 2]}}})
    patch = {"state": {"reported": {"a": None, "obj": {"y": 3}, "list": [9]}}}
    second = _apply(first.current, patch, NOW + 5)
    assert second.current.reported == {"obj": {"x": 1, "y": 3}, "list": [9]}
    metadata = second.current.metadata["reported"]
    assert metadata["obj"] == {"x": {"timestamp": NOW}, "y": {"timestamp": NOW + 5}}
    assert metadata["list"] == [{"timestamp": NOW + 5}]
    assert "a" not in metadata
    assert second.accepted["metadata"]["reported"]["a"] == {"timestamp": NOW + 5}
    cleared = _apply(second.current, {"state": {"reported": None}})
    assert (cleared.current.reported, cleared.current.version) == ({}, 3)


def test_delta_is_what_desired_wants_and_reported_does_not_have() -> None:
    desired = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    reported = {"a": 1, "b": {"c": 2}, "e": [2], "r": 0}
    assert doc.delta(desired, reported) == {"b": {"d": 3}, "e": [1]}
    applied = _apply(None, {"state": {"desired": {"color": "green"}, "reported": {"color": "red"}}})
    message = doc.delta_message(applied, NOW, "tok")
    assert message["state"] == {"color": "green"}
    assert message["metadata"] == {"color": {"timestamp": NOW}}


@pytest.mark.parametrize(("request_", "status", "message"), [
    ({}, 400, "Missing required node: state"),
    ({"state": []}, 400, "State node must be an object"),
    ({"state": {"delta": {}}}, 400, "State contains an invalid node"),
    ({"state": {"desired": 1}}, 400, "Desired node must be an object"),
    ({"state": {}, "version": "1"}, 400, "Invalid version"),
    ({"state": {}, "clientToken": "x" * 65}, 400, "Invalid clientToken"),
    ({"state": {"reported": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}, 400, "maximum is 6"),
])
def test_malformed_updates_get_aws_messages(request_: dict[str, Any], status: int, message: str) -> None:
    with pytest.raises(ShadowError) as caught:
        doc.parse_update(request_)
    assert caught.value.status == status
    assert message in caught.value.message


def test_six_levels_are_allowed_and_the_size_counts_state_only() -> None:
    six = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}  # reported itself is the first level
    _apply(None, {"state": {"reported": six}})
    room = DEFAULT_LIMITS.max_shadow_state_bytes - len('{"reported":{"k":""}}')
    assert doc.state_size({}, {"k": "x" * room}) == DEFAULT_LIMITS.max_shadow_state_bytes
    _apply(None, {"state": {"reported": {"k": "x" * room}}})
    with pytest.raises(ShadowError) as caught:
        _apply(None, {"state": {"reported": {"k": "x" * (room + 1)}}})
    assert caught.value.status == 413


def test_versions_lock_optimistically() -> None:
    first = _apply(None, {"state": {"reported": {"a": 1}}, "version": 0})
    assert first.current.version == 1
    with pytest.raises(ShadowError) as caught:
        _apply(first.current, {"state": {"reported": {"a": 2}}, "version": 0})
    assert caught.value.status == 409
    assert _apply(first.current, {"state": {"reported": {"a": 2}}, "version": 1}).current.version == 2
